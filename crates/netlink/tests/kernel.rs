#![allow(clippy::unwrap_used)]
//! Each operation against the kernel, inside network namespaces created per test (removed on
//! drop, so also when an assertion fails). Needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};
use plexus_netlink::{Ipv4Cidr, MacAddr, Netlink, NetlinkError, blocking};

/// A named network namespace (`/run/netns/<name>`), deleted with everything in it on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nl-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Self { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` with a socket opened inside this namespace.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, NetlinkError>
    where
        T: Send,
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = Result<T, NetlinkError>>,
    {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                blocking(f)
            })
            .join()
            .expect("thread inside the namespace")
        })
    }

    /// Test scaffolding only: `ip` inside this namespace.
    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .status()
            .expect("run ip");
        assert!(st.success(), "ip -n {} {}", self.name, args.join(" "));
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

#[test]
fn veth_peer_is_created_inside_the_other_namespace_with_the_mtu() {
    let node = TestNetns::new("vnode");
    let pod = TestNetns::new("vpod");
    let pod_path = pod.path();
    node.run(|nl| async move {
        nl.create_veth("lxctest0", "eth0", 1400, &pod_path).await?;
        let host = nl.link("lxctest0").await?;
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert_eq!(host.mtu, Some(1400));
        assert!(!host.up);
        assert!(
            !nl.link_exists("eth0").await?,
            "peer must not be in the node namespace"
        );
        nl.set_up("lxctest0").await?;
        assert!(nl.link("lxctest0").await?.up);
        assert_eq!(nl.mac("lxctest0").await?, host.mac.unwrap());
        // The same name again: the kernel refuses, and the error says which device.
        let err = nl
            .create_veth("lxctest0", "eth1", 1400, &pod_path)
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(17), "{err}");
        assert!(err.to_string().contains("device lxctest0"), "{err}");
        Ok(())
    })
    .unwrap();

    let peer = pod.run(|nl| async move { nl.link("eth0").await }).unwrap();
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    assert_eq!(peer.mtu, Some(1400));

    node.run(|nl| async move {
        assert!(nl.delete_link("lxctest0").await?);
        assert!(!nl.delete_link("lxctest0").await?, "a missing link is fine");
        Ok(())
    })
    .unwrap();
    let gone = pod
        .run(|nl| async move { nl.link_exists("eth0").await })
        .unwrap();
    assert!(!gone, "deleting one end removes its peer");
}

#[test]
fn a_missing_peer_namespace_is_named() {
    let node = TestNetns::new("vmiss");
    let err = node
        .run(|nl| async move {
            nl.create_veth(
                "lxcmiss0",
                "eth0",
                1500,
                Path::new("/run/netns/nl-none-such"),
            )
            .await
        })
        .unwrap_err();
    assert!(matches!(err, NetlinkError::Netns { .. }), "{err}");
    assert!(err.to_string().contains("/run/netns/nl-none-such"), "{err}");
}

#[test]
fn pod_side_address_lo_and_routes_through_the_gateway() {
    let node = TestNetns::new("pnode");
    let pod = TestNetns::new("ppod");
    let pod_path = pod.path();
    node.run(|nl| async move { nl.create_veth("lxcpod0", "eth0", 1450, &pod_path).await })
        .unwrap();
    let gw = Ipv4Addr::new(10, 7, 0, 1);
    pod.run(|nl| async move {
        nl.add_address("eth0", cidr("10.7.0.5/32")).await?;
        nl.set_up("lo").await?;
        nl.set_up("eth0").await?;
        nl.route_add_dev(Ipv4Cidr::host(gw), "eth0").await?;
        nl.route_add_via_dev(Ipv4Cidr::DEFAULT, gw, "eth0").await?;

        assert_eq!(nl.ipv4_addresses("eth0").await?, vec![cidr("10.7.0.5/32")]);
        assert!(nl.link("lo").await?.up);
        assert!(nl.link("eth0").await?.up);
        let eth0 = nl.ifindex("eth0").await?;
        let routes = nl.ipv4_routes().await?;
        let to_gw = routes
            .iter()
            .find(|r| r.dst == Ipv4Cidr::host(gw))
            .expect("route to the gateway");
        assert!(to_gw.link_scope);
        assert_eq!((to_gw.oif, to_gw.gateway), (Some(eth0), None));
        let default = routes
            .iter()
            .find(|r| r.dst == Ipv4Cidr::DEFAULT)
            .expect("default route");
        assert_eq!((default.oif, default.gateway), (Some(eth0), Some(gw)));
        assert!(!default.link_scope);

        // Adding twice is refused, and the error names address and device.
        let err = nl
            .add_address("eth0", cidr("10.7.0.5/32"))
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(17), "{err}");
        assert!(err.to_string().contains("10.7.0.5/32 on eth0"), "{err}");
        let err = nl
            .route_add_via_dev(Ipv4Cidr::DEFAULT, gw, "eth0")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("route 0.0.0.0/0 via 10.7.0.1 dev eth0"),
            "{err}"
        );
        Ok(())
    })
    .unwrap();
    // lo has its loopback address but the node side of the pair none.
    let addrs = node
        .run(|nl| async move { nl.ipv4_addresses("lxcpod0").await })
        .unwrap();
    assert!(addrs.is_empty());
}

#[test]
fn node_routes_replace_delete_and_permanent_neighbours() {
    let ns = TestNetns::new("routes");
    let self_path = ns.path();
    ns.run(|nl| async move {
        // A veth pair inside one namespace stands in for a pod's host-side device.
        nl.create_veth("lxcr0", "lxcr1", 1500, &self_path).await?;
        nl.set_up("lxcr0").await?;
        nl.set_up("lxcr1").await?;
        nl.add_address("lxcr1", cidr("192.168.77.1/24")).await?;
        let dev = nl.ifindex("lxcr0").await?;

        let pod = cidr("10.8.0.5/32");
        nl.route_replace_dev(pod, "lxcr0").await?;
        nl.route_replace_dev(pod, "lxcr0").await?; // idempotent
        let routes: Vec<_> = nl
            .ipv4_routes()
            .await?
            .into_iter()
            .filter(|r| r.dst == pod)
            .collect();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert!(routes[0].link_scope);
        assert_eq!(routes[0].oif, Some(dev));

        let remote = cidr("10.9.0.0/24");
        nl.route_replace_via(remote, Ipv4Addr::new(192, 168, 77, 2))
            .await?;
        nl.route_replace_via(remote, Ipv4Addr::new(192, 168, 77, 3))
            .await?;
        let routes: Vec<_> = nl
            .ipv4_routes()
            .await?
            .into_iter()
            .filter(|r| r.dst == remote)
            .collect();
        assert_eq!(routes.len(), 1, "replaced, not added: {routes:?}");
        assert_eq!(routes[0].gateway, Some(Ipv4Addr::new(192, 168, 77, 3)));
        assert!(!routes[0].link_scope);

        assert!(nl.route_delete(remote).await?);
        assert!(!nl.route_delete(remote).await?, "a missing route is fine");
        assert!(nl.ipv4_routes().await?.iter().all(|r| r.dst != remote));
        assert!(nl.route_delete(pod).await?);

        // A gateway no route reaches: the error names the route.
        let err = nl
            .route_replace_via(remote, Ipv4Addr::new(172, 31, 9, 9))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("route 10.9.0.0/24 via 172.31.9.9: replace"),
            "{err}"
        );
        // A device that is not there: named.
        let err = nl.route_replace_dev(pod, "nosuchdev0").await.unwrap_err();
        assert!(matches!(err, NetlinkError::NoSuchDevice { .. }), "{err}");
        assert!(err.to_string().contains("nosuchdev0"), "{err}");

        let ip = Ipv4Addr::new(10, 8, 0, 5);
        let mac: MacAddr = "0a:58:0a:08:00:05".parse()?;
        nl.neigh_replace_permanent(ip, mac, "lxcr0").await?;
        let other: MacAddr = "0a:58:0a:08:00:06".parse()?;
        nl.neigh_replace_permanent(ip, other, "lxcr0").await?;
        let neigh = nl.neighbours("lxcr0").await?;
        let entry = neigh
            .iter()
            .find(|n| n.addr == ip)
            .expect("neighbour entry");
        assert!(entry.permanent);
        assert_eq!(entry.mac, Some(other));
        assert_eq!(neigh.iter().filter(|n| n.addr == ip).count(), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn vxlan_external_is_created_once_and_anything_else_refused() {
    let ns = TestNetns::new("vxlan");
    let self_path = ns.path();
    ns.ip(&[
        "link", "add", "vxplain", "type", "vxlan", "id", "42", "dstport", "4789",
    ]);
    ns.run(|nl| async move {
        let index = nl.ensure_vxlan_external("vxext", 8472, 1450).await?;
        let link = nl.link("vxext").await?;
        assert_eq!(link.index, index);
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.vxlan_external, Some(true));
        assert_eq!(link.vxlan_port, Some(8472));
        assert_eq!(link.mtu, Some(1450));
        assert!(link.up);
        // Found as it is the second time.
        assert_eq!(nl.ensure_vxlan_external("vxext", 8472, 1450).await?, index);

        let err = nl
            .ensure_vxlan_external("vxplain", 8472, 1450)
            .await
            .unwrap_err();
        assert!(matches!(err, NetlinkError::Unsuitable { .. }), "{err}");
        assert!(err.to_string().contains("device vxplain"), "{err}");
        assert!(err.to_string().contains("external"), "{err}");

        nl.create_veth("vethx0", "vethx1", 1500, &self_path).await?;
        let err = nl
            .ensure_vxlan_external("vethx0", 8472, 1450)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a VXLAN device"), "{err}");
        assert!(err.to_string().contains("kind veth"), "{err}");
        assert!(
            !nl.link("vethx0").await?.up,
            "a refused device is left alone"
        );
        Ok(())
    })
    .unwrap();
}
