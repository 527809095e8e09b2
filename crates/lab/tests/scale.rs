//! The scale harness at CI size: 50 simulated remotes (20 nodes, 100 endpoints, 20 identities,
//! 5 shared services each), each in its own real etcd, cached by the real KVStoreMesh into the
//! local etcd and consumed by one real `plexus-agent` with the eBPF datapath. It asserts exact
//! counts in the agent's listings and its pinned ipcache map, then removes 10 remotes and
//! asserts the exact drain. It measures no time (the figures are the `scale` bench's).
//!
//! Needs root, etcd, a kernel with TCX (>= 6.6) and the workspace's binaries
//! (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use plexus_agent_api::Client;
use plexus_clustermesh::kvstoremesh::KvStoreMesh;
use plexus_clustermesh::remote_cluster::DriverTiming;
use plexus_datapath::ebpf::pinned::PinnedIpcache;
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager};
use plexus_lab::scale::{self, LOCAL_CLUSTER, ScaleAgent, ScaleSpec, SimCluster};
use plexus_model::keys::StateKind;
use plexus_test_support::{EtcdFleet, workspace_bin};

const SPEC: ScaleSpec = ScaleSpec {
    clusters: 50,
    nodes: 20,
    endpoints: 100,
    identities: 20,
    services: 5,
    backends: 4,
};
/// Remotes removed at the end.
const REMOVED: usize = 10;
/// The longest any step may take before the test fails (nothing is timed).
const LIMIT: Duration = Duration::from_secs(180);

async fn connect(endpoint: &str) -> Arc<dyn KvBackend> {
    Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![endpoint.to_string()]))
            .await
            .unwrap(),
    )
}

/// Polls `check` until it returns `Ok`; fails with its last reason after [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match check().await {
            Ok(()) => return,
            Err(reason) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {LIMIT:?}: {reason}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the agent shows, counted per remote: (nodes, endpoints, identities, shared services)
/// from its clustermesh report, with readiness and refusals.
async fn report(client: &Client) -> Result<BTreeMap<String, (bool, [usize; 4], u64)>, String> {
    let r = client.clustermesh().await.map_err(|e| e.to_string())?;
    Ok(r.mesh
        .remote_clusters
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                (
                    c.ready,
                    [
                        c.num_nodes,
                        c.num_endpoints,
                        c.num_identities,
                        c.num_shared_services,
                    ],
                    c.num_rejected,
                ),
            )
        })
        .collect())
}

/// The pinned map's remote pod entries: address -> (identity, tunnel endpoint, cluster id).
fn pod_entries(map: &PinnedIpcache) -> BTreeMap<Ipv4Addr, (u32, Option<Ipv4Addr>, u16)> {
    map.entries()
        .unwrap()
        .into_iter()
        .filter(|(p, _)| p.len == 32 && scale::is_remote_pod(p.addr))
        .map(|(p, v)| (p.addr, (v.identity, v.tunnel_endpoint, v.cluster_id)))
        .collect()
}

/// The exact entries `sims` must put in the map.
fn expected_pods(sims: &[SimCluster]) -> BTreeMap<Ipv4Addr, (u32, Option<Ipv4Addr>, u16)> {
    sims.iter()
        .flat_map(|sim| {
            (0..SPEC.endpoints).map(move |e| {
                (
                    sim.endpoint_ip(e),
                    (
                        sim.endpoint_identity(e, 0),
                        Some(sim.node_ip(e % SPEC.nodes)),
                        sim.id as u16,
                    ),
                )
            })
        })
        .collect()
}

/// Checks every listing of the agent against `sims` exactly.
async fn check_exact(client: &Client, map: &PinnedIpcache, sims: &[SimCluster], local_rows: usize) {
    // The clustermesh report: every remote ready with its exact counts, nothing refused.
    let report = report(client).await.unwrap();
    let expected: BTreeMap<String, (bool, [usize; 4], u64)> = sims
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                (
                    true,
                    [SPEC.nodes, SPEC.endpoints, SPEC.identities, SPEC.services],
                    0,
                ),
            )
        })
        .collect();
    assert_eq!(report, expected);

    // Nodes: the local one plus every remote node, by cluster.
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    for n in client.nodes().await.unwrap() {
        *nodes.entry(n.cluster).or_default() += 1;
    }
    let mut want: BTreeMap<String, usize> =
        sims.iter().map(|s| (s.name.clone(), SPEC.nodes)).collect();
    want.insert(LOCAL_CLUSTER.into(), 1);
    assert_eq!(nodes, want);

    // Identities of the remotes, exactly theirs.
    let mut ids: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for i in client.identities().await.unwrap() {
        if i.cluster != LOCAL_CLUSTER && !i.cluster.is_empty() {
            ids.entry(i.cluster).or_default().push(i.id);
        }
    }
    for v in ids.values_mut() {
        v.sort();
    }
    let want: BTreeMap<String, Vec<u32>> = sims
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                (0..SPEC.identities).map(|j| s.identity(j)).collect(),
            )
        })
        .collect();
    assert_eq!(ids, want);

    // The pinned ipcache map: every remote pod with its identity, node and cluster; one entry
    // per remote node; the local entries unchanged. The agent's listing reads the same map.
    assert_eq!(pod_entries(map), expected_pods(sims));
    let all = map.entries().unwrap();
    let node_rows = all
        .iter()
        .filter(|(p, _)| scale::is_remote_node(p.addr.into()))
        .count();
    assert_eq!(node_rows, sims.len() * SPEC.nodes, "remote node entries");
    let mut cidrs: Vec<_> = all
        .iter()
        .filter(|(p, _)| p.len < 32 && scale::is_remote_pod(p.addr))
        .map(|(p, v)| (format!("{}/{}", p.addr, p.len), v.tunnel_endpoint))
        .collect();
    cidrs.sort();
    let mut want_cidrs: Vec<_> = sims
        .iter()
        .flat_map(|s| {
            (0..SPEC.nodes).map(move |k| {
                let n = s.node(k);
                (n.ipv4_alloc_cidr.unwrap().to_string(), Some(s.node_ip(k)))
            })
        })
        .collect();
    want_cidrs.sort();
    assert_eq!(cidrs, want_cidrs, "remote nodes' pod CIDRs");
    assert_eq!(
        all.len(),
        local_rows + sims.len() * (SPEC.endpoints + 2 * SPEC.nodes),
        "every entry of the map"
    );
    assert_eq!(client.ipcache().await.unwrap().len(), all.len());
}

#[test]
fn fifty_remotes_reach_the_agent_exactly_and_drain_exactly() {
    SPEC.check().unwrap();
    scale::enter_private_netns().unwrap();
    plexus_kvstore::install_crypto_provider();
    let fleet = EtcdFleet::start(SPEC.clusters + 1, 8, |_| {}).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(600), run(&fleet))
            .await
            .expect("the scale test timed out")
    });
}

async fn run(fleet: &EtcdFleet) {
    let sims: Vec<SimCluster> = SPEC.remotes().collect();
    let remote_endpoints = &fleet.endpoints()[1..];
    let local_endpoint = fleet.endpoints()[0].clone();
    let dir = tempfile::Builder::new()
        .prefix("plexus-scale-test-")
        .tempdir()
        .unwrap();

    let mut published = Vec::new();
    for (sim, endpoint) in sims.iter().zip(remote_endpoints) {
        published.push(scale::publish(connect(endpoint).await, sim).await.unwrap());
    }
    // The baseline reads back exactly what was published.
    for (sim, p) in sims.iter().zip(&published) {
        let listed = scale::list_and_decode(p.backend.as_ref(), sim)
            .await
            .unwrap();
        assert_eq!(listed.entries, SPEC.entries_per_remote());
    }

    let local = connect(&local_endpoint).await;
    let leases = LeaseManager::start(local.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let km_dir = dir.path().join("kvstoremesh");
    std::fs::create_dir_all(&km_dir).unwrap();
    let _km = KvStoreMesh::spawn(
        &km_dir,
        SPEC.local().unwrap(),
        local.clone(),
        &leases,
        DriverTiming::default(),
        Duration::from_millis(500),
    );
    let agent = ScaleAgent::start(
        &workspace_bin("plexus-agent"),
        &dir.path().join("agent"),
        &local_endpoint,
        &SPEC,
    )
    .await
    .unwrap();
    let client = agent.client();
    let map = PinnedIpcache::open(&agent.pin_dir()).unwrap();
    // The local node's own entries, before any remote.
    let mut local_rows = 0;
    eventually("the local node's entries", || {
        let rows = map.entries().map(|e| e.len()).unwrap_or(0);
        let same = rows > 0 && rows == local_rows;
        local_rows = rows;
        async move {
            if same {
                Ok(())
            } else {
                Err(format!("{rows} entries"))
            }
        }
    })
    .await;

    for (sim, endpoint) in sims.iter().zip(remote_endpoints) {
        scale::write_remote_config(&km_dir, &sim.name, endpoint).unwrap();
        scale::write_remote_config(&agent.clustermesh_dir(), &sim.name, &local_endpoint).unwrap();
    }
    let want = expected_pods(&sims).len();
    eventually("every remote in the agent and its map", || {
        let client = client.clone();
        let pods = pod_entries(&map).len();
        async move {
            let r = report(&client).await?;
            let ready = r.values().filter(|(ready, _, _)| *ready).count();
            if ready == SPEC.clusters && pods == want {
                Ok(())
            } else {
                Err(format!(
                    "{ready} remotes ready, {pods}/{want} pods in the map"
                ))
            }
        }
    })
    .await;
    check_exact(&client, &map, &sims, local_rows).await;

    // Remove the last REMOVED remotes from the mesh (KVStoreMesh and the agent): exactly their
    // entries go, from the agent, its map and the cache.
    let (kept, removed) = sims.split_at(SPEC.clusters - REMOVED);
    for sim in removed {
        std::fs::remove_file(km_dir.join(&sim.name)).unwrap();
        std::fs::remove_file(agent.clustermesh_dir().join(&sim.name)).unwrap();
    }
    let want = expected_pods(kept).len();
    eventually("the removed remotes drained", || {
        let client = client.clone();
        let pods = pod_entries(&map).len();
        let local = local.clone();
        async move {
            let r = report(&client).await?;
            let cached = local
                .list_prefix(&format!("{}/", StateKind::Ip.cache_base()))
                .await
                .map_err(|e| e.to_string())?
                .kvs
                .len();
            if r.len() == kept.len() && pods == want && cached == want {
                Ok(())
            } else {
                Err(format!(
                    "{} remotes, {pods}/{want} pods in the map, {cached} cached ip entries",
                    r.len()
                ))
            }
        }
    })
    .await;
    check_exact(&client, &map, kept, local_rows).await;
    for sim in removed {
        for kind in [
            StateKind::Nodes,
            StateKind::Identities,
            StateKind::Ip,
            StateKind::Services,
        ] {
            let left = local
                .list_prefix(&kind.cache_prefix(&sim.name))
                .await
                .unwrap();
            assert!(
                left.kvs.is_empty(),
                "{} of {} still cached",
                kind.name(),
                sim.name
            );
        }
    }
    drop(agent);
}
