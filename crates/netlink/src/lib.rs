//! Kernel network configuration over rtnetlink: the links, addresses, routes and neighbour
//! entries that the agent, the CNI plugin and the datapath set up, without running `ip`.
//!
//! A [`Netlink`] is one rtnetlink socket. A netlink socket belongs to the network namespace it
//! was opened in, whichever thread later uses it: open it in the namespace you mean to change.
//! [`blocking`] is the entry point for synchronous callers: it opens a socket in the calling
//! thread's namespace, drives it on a current-thread tokio runtime and returns the result. It
//! is safe to call from inside a tokio runtime (it then runs on a helper thread, which inherits
//! the caller's namespace) and from a thread that has entered another namespace with `setns`.
//!
//! Requests use the kernel's own semantics: `replace` creates or overwrites, deletions of
//! something already gone report `Ok(false)` rather than an error. Every error names the
//! device, route, address or namespace at fault and carries the kernel's errno
//! ([`NetlinkError::raw_os_error`]).

mod error;
mod types;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, address::AddressAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

pub use error::NetlinkError;
pub use types::{Ipv4Cidr, MacAddr};

use error::kernel;

/// Linux's `ENODEV`: the device named does not exist.
const ENODEV: i32 = 19;
/// Linux's `ESRCH`: the route to delete does not exist.
const ESRCH: i32 = 3;
/// Linux's `EEXIST`: the rule to add is there already.
const EEXIST: i32 = 17;
/// Linux's `EINVAL`.
const EINVAL: i32 = 22;

/// What the kernel reports about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// Hardware address, for devices with a 6-byte one.
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The link kind (`veth`, `vxlan`, ...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// For a VXLAN device: whether it is in collect-metadata (`external`) mode.
    pub vxlan_external: Option<bool>,
    /// For a VXLAN device: its UDP destination port.
    pub vxlan_port: Option<u16>,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Ipv4Cidr,
    /// Next hop, for routes `via` a gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Whether the route has link scope (the destination is directly on the device).
    pub link_scope: bool,
}

/// An IPv4 route of another table than main ([`Netlink::ipv4_routes_in_table`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    /// Destination prefix.
    pub dst: Ipv4Cidr,
    /// Whether it is an `unreachable` route.
    pub unreachable: bool,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Its metric (`priority`).
    pub metric: u32,
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub addr: Ipv4Addr,
    /// Its hardware address, when resolved.
    pub mac: Option<MacAddr>,
    /// Whether the entry is permanent (`NUD_PERMANENT`: never re-resolved nor expired).
    pub permanent: bool,
}

/// Runs `f` with a [`Netlink`] socket opened in the calling thread's network namespace and
/// returns its result. See the crate documentation for where it runs.
pub fn blocking<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    let run = move || -> Result<T, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Socket)?;
        rt.block_on(async move { f(Netlink::open()?).await })
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    // A runtime cannot be started inside another one; a new thread starts in this thread's
    // network namespace (namespaces are inherited at clone), so the socket lands in the same.
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|_| Err(NetlinkError::Panicked))
    })
}

/// One rtnetlink socket, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace. Must be called inside a
    /// tokio runtime with IO enabled: the socket's connection runs as a task on it.
    pub fn open() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    fn device_err(device: &str, op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
        let source = kernel(e);
        if source.raw_os_error() == Some(ENODEV) {
            return NetlinkError::NoSuchDevice {
                device: device.to_string(),
            };
        }
        NetlinkError::Device {
            device: device.to_string(),
            op: op.into(),
            source,
        }
    }

    async fn link_message(&self, name: &str) -> Result<LinkMessage, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(NetlinkError::NoSuchDevice {
                device: name.to_string(),
            }),
            Err(e) => Err(Self::device_err(name, "read", e)),
        }
    }

    /// A device's details; [`NetlinkError::NoSuchDevice`] when there is none of that name.
    pub async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        Ok(link_from_message(self.link_message(name).await?))
    }

    /// Whether a device of that name exists.
    pub async fn link_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_message(name).await {
            Ok(_) => Ok(true),
            Err(NetlinkError::NoSuchDevice { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A device's interface index.
    pub async fn ifindex(&self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.link_message(name).await?.header.index)
    }

    /// A device's hardware address.
    pub async fn mac(&self, name: &str) -> Result<MacAddr, NetlinkError> {
        self.link(name)
            .await?
            .mac
            .ok_or_else(|| NetlinkError::Unsuitable {
                device: name.to_string(),
                reason: "has no MAC address".to_string(),
            })
    }

    /// Brings a device up.
    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.ifindex(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Self::device_err(name, "set up", e))
    }

    /// Deletes a device; `Ok(false)` when there was none of that name (or it went away in
    /// between, e.g. with its peer's namespace).
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let index = match self.ifindex(name).await {
            Ok(index) => index,
            Err(NetlinkError::NoSuchDevice { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => match Self::device_err(name, "delete", e) {
                NetlinkError::NoSuchDevice { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Creates the veth pair `host` <-> `peer` with `mtu` on both ends, `peer` directly inside
    /// the network namespace at `peer_netns` under its final name: one request, so no
    /// temporary name ever exists in this namespace and a failure leaves nothing behind.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_netns: &Path,
    ) -> Result<(), NetlinkError> {
        let ns = std::fs::File::open(peer_netns).map_err(|source| NetlinkError::Netns {
            path: peer_netns.to_path_buf(),
            source,
        })?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer)
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let res = self.handle.link().add(msg).execute().await;
        // The kernel has resolved the fd by the time it answers.
        drop(ns);
        res.map_err(|e| NetlinkError::Device {
            device: host.to_string(),
            op: format!(
                "create veth (peer {peer} in {}, mtu {mtu})",
                peer_netns.display()
            ),
            source: kernel(e),
        })
    }

    /// The IPv4 addresses on a device.
    pub async fn ipv4_addresses(&self, device: &str) -> Result<Vec<Ipv4Cidr>, NetlinkError> {
        let index = self.ifindex(device).await?;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await.map_err(|e| NetlinkError::Address {
            address: "*".to_string(),
            device: device.to_string(),
            source: kernel(e),
        })? {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
            // point-to-point links); `ip addr` prints the same.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
                    _ => None,
                })
            });
            if let Some(cidr) = addr.and_then(|a| Ipv4Cidr::new(a, msg.header.prefix_len)) {
                out.push(cidr);
            }
        }
        Ok(out)
    }

    /// Adds an IPv4 address to a device (`ip addr add`); an address already there is an error
    /// (`EEXIST`), as with `ip`.
    pub async fn add_address(&self, device: &str, addr: Ipv4Cidr) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.prefix_len)
            .execute()
            .await
            .map_err(|e| NetlinkError::Address {
                address: addr.to_string(),
                device: device.to_string(),
                source: kernel(e),
            })
    }

    /// Adds or replaces the route to `dst` directly on `device`, link scope (`ip route
    /// replace DST dev DEV scope link`).
    pub async fn route_replace_dev(&self, dst: Ipv4Cidr, device: &str) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        let msg = route_builder(dst)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.route_request(msg, true, || format!("{dst} dev {device} scope link"))
            .await
    }

    /// Adds or replaces the route to `dst` via the gateway `gw` (`ip route replace DST via
    /// GW`, the kernel picks the device that reaches `gw`).
    pub async fn route_replace_via(&self, dst: Ipv4Cidr, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = route_builder(dst).gateway(gw).build();
        self.route_request(msg, true, || format!("{dst} via {gw}"))
            .await
    }

    /// Adds or replaces the route to `dst` via the gateway `gw` in routing table `table`
    /// (`ip route replace DST via GW table TABLE`).
    pub async fn route_replace_via_in_table(
        &self,
        dst: Ipv4Cidr,
        gw: Ipv4Addr,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let msg = route_builder(dst).gateway(gw).table_id(table).build();
        self.route_request(msg, true, || format!("{dst} via {gw} table {table}"))
            .await
    }

    /// Adds the route to `dst` on `device`, link scope; an existing route is an error.
    pub async fn route_add_dev(&self, dst: Ipv4Cidr, device: &str) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        let msg = route_builder(dst)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.route_request(msg, false, || format!("{dst} dev {device} scope link"))
            .await
    }

    /// Adds the route to `dst` via `gw` out of `device` (`ip route add DST via GW dev DEV`);
    /// an existing route is an error.
    pub async fn route_add_via_dev(
        &self,
        dst: Ipv4Cidr,
        gw: Ipv4Addr,
        device: &str,
    ) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        let msg = route_builder(dst)
            .gateway(gw)
            .output_interface(index)
            .build();
        self.route_request(msg, false, || format!("{dst} via {gw} dev {device}"))
            .await
    }

    async fn route_request(
        &self,
        msg: RouteMessage,
        replace: bool,
        describe: impl Fn() -> String,
    ) -> Result<(), NetlinkError> {
        let req = self.handle.route().add(msg);
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(|e| NetlinkError::Route {
            route: describe(),
            op: if replace { "replace" } else { "add" },
            source: kernel(e),
        })
    }

    /// The device that holds the IPv4 address `addr`, if any.
    pub async fn link_with_address(&self, addr: Ipv4Addr) -> Result<Option<Link>, NetlinkError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_address_filter(IpAddr::V4(addr))
            .execute();
        let index = match addrs.try_next().await {
            Ok(Some(msg)) => msg.header.index,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(NetlinkError::Address {
                    address: addr.to_string(),
                    device: "*".to_string(),
                    source: kernel(e),
                });
            }
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from_message(msg))),
            Ok(None) => Ok(None),
            Err(e) => Err(Self::device_err(&format!("index {index}"), "read", e)),
        }
    }

    /// Sets a device's MTU (`ip link set DEV mtu MTU`).
    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let index = self.ifindex(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| Self::device_err(name, format!("set mtu {mtu}"), e))
    }

    /// Adds or replaces the route to `dst` on `device` in routing table `table` with metric
    /// `metric`, link scope, preferring source `src` (`ip route replace DST dev DEV [src SRC]
    /// table TABLE metric METRIC`).
    pub async fn route_replace_dev_in_table(
        &self,
        dst: Ipv4Cidr,
        device: &str,
        src: Option<Ipv4Addr>,
        table: u32,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        let mut b = route_builder(dst)
            .output_interface(index)
            .scope(RouteScope::Link)
            .table_id(table)
            .priority(metric);
        if let Some(src) = src {
            b = b.pref_source(src);
        }
        let src = src.map(|s| format!(" src {s}")).unwrap_or_default();
        self.route_request(b.build(), true, || {
            format!("{dst} dev {device}{src} table {table} metric {metric}")
        })
        .await
    }

    /// Adds or replaces an `unreachable` route to `dst` in table `table` with metric `metric`
    /// (`ip route replace unreachable DST table TABLE metric METRIC`): packets that reach it
    /// are refused with an ICMP error, never sent elsewhere.
    pub async fn route_replace_unreachable_in_table(
        &self,
        dst: Ipv4Cidr,
        table: u32,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        let msg = route_builder(dst)
            .kind(RouteType::Unreachable)
            .table_id(table)
            .priority(metric)
            .build();
        self.route_request(msg, true, || {
            format!("unreachable {dst} table {table} metric {metric}")
        })
        .await
    }

    /// The kernel's messages for the IPv4 routes of table `table` (the dump holds every table:
    /// a table id above 255 travels only as an attribute).
    async fn route_messages_of_table(&self, table: u32) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut matching = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(|e| NetlinkError::Route {
            route: format!("* table {table}"),
            op: "list",
            source: kernel(e),
        })? {
            let t = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if t == table {
                matching.push(msg);
            }
        }
        Ok(matching)
    }

    /// The IPv4 routes of table `table`.
    pub async fn ipv4_routes_in_table(&self, table: u32) -> Result<Vec<TableRoute>, NetlinkError> {
        let mut out = Vec::new();
        for msg in self.route_messages_of_table(table).await? {
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            let mut metric = 0;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if let Some(dst) = Ipv4Cidr::new(dst, msg.header.destination_prefix_length) {
                out.push(TableRoute {
                    dst,
                    unreachable: msg.header.kind == RouteType::Unreachable,
                    oif,
                    metric,
                });
            }
        }
        Ok(out)
    }

    /// Makes sure the rule `priority PRIORITY ipproto udp dport PORT lookup TABLE` exists
    /// (`ip rule add ...`): packets the kernel routes to UDP port `port` (for example the
    /// outer packets of a UDP tunnel) are routed by table `table`. `Ok(false)` when it was
    /// there already.
    pub async fn ensure_rule_udp_dport(
        &self,
        port: u16,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        use rtnetlink::packet_route::IpProtocol;
        use rtnetlink::packet_route::rule::{RuleAttribute, RulePortRange};
        self.ensure_rule(
            vec![
                RuleAttribute::IpProtocol(IpProtocol::Udp),
                RuleAttribute::DestinationPortRange(RulePortRange {
                    start: port,
                    end: port,
                }),
            ],
            table,
            priority,
            || format!("priority {priority} ipproto udp dport {port} lookup {table}"),
        )
        .await
    }

    /// Adds the rule `priority PRIORITY <selector> lookup TABLE`, the selector given as rule
    /// attributes; `Ok(false)` when it was there already. `describe` prints the rule for errors.
    async fn ensure_rule(
        &self,
        selector: Vec<rtnetlink::packet_route::rule::RuleAttribute>,
        table: u32,
        priority: u32,
        describe: impl FnOnce() -> String,
    ) -> Result<bool, NetlinkError> {
        use rtnetlink::packet_route::rule::RuleAction;
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        req.message_mut().attributes.extend(selector);
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let source = kernel(e);
                if source.raw_os_error() == Some(EEXIST) {
                    return Ok(false);
                }
                Err(NetlinkError::Rule {
                    rule: describe(),
                    op: "add",
                    source,
                })
            }
        }
    }

    /// Removes every rule `ipproto udp dport PORT lookup TABLE` (what
    /// [`Netlink::ensure_rule_udp_dport`] adds); how many there were.
    pub async fn delete_rules_udp_dport(
        &self,
        port: u16,
        table: u32,
    ) -> Result<usize, NetlinkError> {
        use rtnetlink::packet_route::IpProtocol;
        use rtnetlink::packet_route::rule::RuleAttribute;
        let describe = || format!("ipproto udp dport {port} lookup {table}");
        let mut rules = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        let mut matching = Vec::new();
        while let Some(msg) = rules.try_next().await.map_err(|e| NetlinkError::Rule {
            rule: describe(),
            op: "list",
            source: kernel(e),
        })? {
            let t = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            let udp = msg
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::IpProtocol(IpProtocol::Udp)));
            let dport = msg.attributes.iter().any(|a| {
                matches!(a, RuleAttribute::DestinationPortRange(r) if r.start == port && r.end == port)
            });
            if t == table && udp && dport {
                matching.push(msg);
            }
        }
        let n = matching.len();
        for msg in matching {
            self.handle
                .rule()
                .del(msg)
                .execute()
                .await
                .map_err(|e| NetlinkError::Rule {
                    rule: describe(),
                    op: "delete",
                    source: kernel(e),
                })?;
        }
        Ok(n)
    }

    /// Makes sure the rule `priority PRIORITY fwmark MARK/MASK lookup TABLE` exists (`ip rule
    /// add ...`): packets whose mark matches are routed by table `table`. `Ok(false)` when it
    /// was there already.
    pub async fn ensure_rule_fwmark(
        &self,
        mark: u32,
        mask: u32,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        use rtnetlink::packet_route::rule::RuleAttribute;
        self.ensure_rule(
            vec![RuleAttribute::FwMark(mark), RuleAttribute::FwMask(mask)],
            table,
            priority,
            || format!("priority {priority} fwmark {mark:#x}/{mask:#x} lookup {table}"),
        )
        .await
    }

    /// Adds or replaces `local 0.0.0.0/0 dev lo table TABLE`: every packet routed by table
    /// `table` is delivered to this host, whatever its destination.
    pub async fn route_replace_local_default_in_table(
        &self,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let index = self.ifindex("lo").await?;
        let dst = Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).ok_or_else(|| NetlinkError::Route {
            route: format!("local 0.0.0.0/0 dev lo table {table}"),
            op: "replace",
            source: std::io::Error::from_raw_os_error(EINVAL),
        })?;
        let msg = route_builder(dst)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(index)
            .table_id(table)
            .build();
        self.route_request(msg, true, || {
            format!("local 0.0.0.0/0 dev lo table {table}")
        })
        .await
    }

    /// Removes every IPv4 route of table `table` (`ip route flush table TABLE`); how many.
    pub async fn flush_table(&self, table: u32) -> Result<usize, NetlinkError> {
        let matching = self.route_messages_of_table(table).await?;
        let n = matching.len();
        for msg in matching {
            if let Err(e) = self.handle.route().del(msg).execute().await {
                let source = kernel(e);
                if source.raw_os_error() != Some(ESRCH) {
                    return Err(NetlinkError::Route {
                        route: format!("* table {table}"),
                        op: "delete",
                        source,
                    });
                }
            }
        }
        Ok(n)
    }

    /// Deletes the main-table route to `dst`, whatever its next hop; `Ok(false)` when there
    /// was none.
    pub async fn route_delete(&self, dst: Ipv4Cidr) -> Result<bool, NetlinkError> {
        self.route_delete_in_table(dst, None).await
    }

    /// Deletes the route to `dst` of table `table` (the main table with `None`), whatever
    /// its next hop; `Ok(false)` when there was none.
    pub async fn route_delete_in_table(
        &self,
        dst: Ipv4Cidr,
        table: Option<u32>,
    ) -> Result<bool, NetlinkError> {
        let mut b = route_builder(dst);
        if let Some(table) = table {
            b = b.table_id(table);
        }
        let mut msg = b.build();
        // As `ip route del`: match any scope, protocol and type.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let source = kernel(e);
                if source.raw_os_error() == Some(ESRCH) {
                    return Ok(false);
                }
                Err(NetlinkError::Route {
                    route: dst.to_string(),
                    op: "delete",
                    source,
                })
            }
        }
    }

    /// The IPv4 routes of the main table.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(|e| NetlinkError::Route {
            route: "*".to_string(),
            op: "list",
            source: kernel(e),
        })? {
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Some(dst) = Ipv4Cidr::new(dst, msg.header.destination_prefix_length) {
                out.push(Route {
                    dst,
                    gateway,
                    oif,
                    link_scope: msg.header.scope == RouteScope::Link,
                });
            }
        }
        Ok(out)
    }

    /// Adds or replaces a permanent neighbour entry `addr` -> `mac` on `device` (`ip neigh
    /// replace ADDR lladdr MAC dev DEV nud permanent`).
    pub async fn neigh_replace_permanent(
        &self,
        addr: Ipv4Addr,
        mac: MacAddr,
        device: &str,
    ) -> Result<(), NetlinkError> {
        let index = self.ifindex(device).await?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::Neighbour {
                address: format!("{addr} lladdr {mac}"),
                device: device.to_string(),
                source: kernel(e),
            })
    }

    /// The IPv4 neighbour entries on a device.
    pub async fn neighbours(&self, device: &str) -> Result<Vec<Neighbour>, NetlinkError> {
        let index = self.ifindex(device).await?;
        let mut entries = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = entries
            .try_next()
            .await
            .map_err(|e| NetlinkError::Neighbour {
                address: "*".to_string(),
                device: device.to_string(),
                source: kernel(e),
            })?
        {
            if msg.header.ifindex == index
                && let Some(n) = neighbour_from_message(&msg)
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Makes sure a VXLAN device `name` in collect-metadata (`external`) mode exists: creates
    /// it with UDP port `port` and `mtu` when missing; refuses a device of that name that is
    /// not VXLAN or not in external mode (it would carry traffic the datapath cannot steer).
    /// Brings it up and returns its interface index.
    pub async fn ensure_vxlan_external(
        &self,
        name: &str,
        port: u16,
        mtu: u32,
    ) -> Result<u32, NetlinkError> {
        match self.link(name).await {
            Ok(link) => {
                let reason = match (link.kind.as_deref(), link.vxlan_external) {
                    (Some("vxlan"), Some(true)) => None,
                    (Some("vxlan"), _) => Some(
                        "is a VXLAN device but not in collect-metadata (external) mode".to_string(),
                    ),
                    (kind, _) => Some(format!(
                        "exists but is not a VXLAN device in collect-metadata (external) mode (kind {})",
                        kind.unwrap_or("none")
                    )),
                };
                if let Some(reason) = reason {
                    return Err(NetlinkError::Unsuitable {
                        device: name.to_string(),
                        reason,
                    });
                }
            }
            Err(NetlinkError::NoSuchDevice { .. }) => {
                // As `ip link add NAME type vxlan external dstport PORT`: collect metadata
                // and no learning, the VNI and remote come from each packet's metadata.
                let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                    .append_info_data(InfoVxlan::CollectMetadata(true))
                    .append_info_data(InfoVxlan::Learning(false))
                    .port(port)
                    .mtu(mtu)
                    .build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| NetlinkError::Device {
                        device: name.to_string(),
                        op: format!("create vxlan (external, dstport {port}, mtu {mtu})"),
                        source: kernel(e),
                    })?;
            }
            Err(e) => return Err(e),
        }
        self.set_up(name).await?;
        self.ifindex(name).await
    }
}

fn route_builder(dst: Ipv4Cidr) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst.addr, dst.prefix_len)
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: None,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan_external: None,
        vxlan_port: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Address(a) => {
                link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan_external = Some(
                                data.iter()
                                    .any(|d| matches!(d, InfoVxlan::CollectMetadata(true))),
                            );
                            link.vxlan_port = data.iter().find_map(|d| match d {
                                InfoVxlan::Port(p) => Some(*p),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn neighbour_from_message(msg: &NeighbourMessage) -> Option<Neighbour> {
    let addr = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(*a),
        _ => None,
    })?;
    let mac = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => {
            <[u8; 6]>::try_from(m.as_slice()).ok().map(MacAddr)
        }
        _ => None,
    });
    Some(Neighbour {
        addr,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}
