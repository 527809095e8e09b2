//! The remote-cluster driver under paused time, over an in-memory remote: heartbeat staleness,
//! the service cache TTL and the reconnect backoff happen at exactly the (virtual) times the
//! protocol says, and a remote's cluster id reaches consumers, from its cluster config, before
//! any of its entries. No test here waits in real time: tokio's paused clock jumps to the next
//! timer whenever every task is idle.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Remote, c1, publish_c2, spawn_c2};
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_kvstore::{KvBackend, MemoryBackend};
use plexus_model::keys::{self, StateKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Every test's limit, in virtual time (a stuck test reaches it at once).
const LIMIT: Duration = Duration::from_secs(3600);

const HEALTH: Duration = Duration::from_secs(2);

fn timing(protocol: Timing) -> DriverTiming {
    DriverTiming {
        protocol,
        health_interval: HEALTH,
        health_timeout: Duration::from_secs(1),
        canary_poll: Duration::from_millis(500),
        ..DriverTiming::default()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn put(b: &MemoryBackend, key: String, value: &str) {
    b.put(&key, value.as_bytes().to_vec(), None).await.unwrap();
}

/// Publishes, in c2's state, one node, one ipcache entry and one identity of cluster `id`, and
/// (with `service`) one shared global service.
async fn publish_entries(b: &MemoryBackend, id: u32, service: bool) {
    put(
        b,
        format!("{}n1", StateKind::Nodes.state_prefix("c2")),
        &format!(r#"{{"Name":"n1","Cluster":"c2","ClusterID":{id}}}"#),
    )
    .await;
    let identity = id << 16;
    put(
        b,
        format!("{}10.2.0.5", StateKind::Ip.state_prefix("c2")),
        &format!(
            r#"{{"IP":"10.2.0.5","Mask":null,"HostIP":"192.168.0.2","ID":{identity},"Key":0,"Metadata":""}}"#
        ),
    )
    .await;
    put(
        b,
        format!("{}{identity}", StateKind::Identities.state_prefix("c2")),
        "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;",
    )
    .await;
    if service {
        put(
            b,
            format!("{}default/web", StateKind::Services.state_prefix("c2")),
            &format!(
                r#"{{"cluster":"c2","namespace":"default","name":"web","frontends":{{}},"backends":{{"10.2.0.5":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":{id}}}"#
            ),
        )
        .await;
    }
}

async fn next(rx: &mut mpsc::Receiver<MeshEvent>) -> RemoteEvent {
    rx.recv().await.expect("the driver is running").event
}

/// The events up to and including `Synced`.
async fn until_synced(rx: &mut mpsc::Receiver<MeshEvent>) -> Vec<RemoteEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(rx).await;
        let synced = e == RemoteEvent::Synced;
        events.push(e);
        if synced {
            return events;
        }
    }
}

fn is_entry(e: &RemoteEvent) -> bool {
    !matches!(
        e,
        RemoteEvent::ClusterConfig { .. } | RemoteEvent::Synced | RemoteEvent::Drained
    )
}

fn is_delete(e: &RemoteEvent) -> bool {
    matches!(
        e,
        RemoteEvent::NodeDelete(_)
            | RemoteEvent::IpDelete(_)
            | RemoteEvent::IdentityDelete(_)
            | RemoteEvent::ServiceDelete(_)
    )
}

/// A remote whose heartbeat value stops changing is reported not connected after exactly two
/// heartbeat intervals, stays so while the value stays, and is connected again at the first
/// health check that reads a new value. Nothing is deleted meanwhile.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_that_stops_changing_goes_stale_after_two_intervals() {
    timeout(LIMIT, async {
        let remote = Remote::new();
        put(&remote.store, keys::HEARTBEAT.into(), "h1").await;
        publish_c2(&remote.store, 2).await;
        publish_entries(&remote.store, 2, false).await;
        let t0 = Instant::now();
        let protocol = Timing {
            heartbeat_interval: secs(10),
            ..Timing::default()
        };
        let (cluster, mut rx, _ids) = spawn_c2(&remote, timing(protocol));
        let mut status = cluster.subscribe();
        until_synced(&mut rx).await;
        assert!(cluster.status().protocol.connected);
        // The first health check (at 2 s) is the first value seen: stale 20 s after it.
        sleep_until(t0 + secs(21)).await;
        assert!(cluster.status().protocol.connected, "not stale yet");
        status.wait_for(|s| !s.protocol.connected).await.unwrap();
        assert_eq!(Instant::now() - t0, secs(22), "stale after two intervals");
        let s = cluster.status();
        assert!(!s.protocol.ready);
        assert!(
            s.protocol
                .last_failure
                .as_deref()
                .is_some_and(|f| f.contains("heartbeat not updated")),
            "{s:?}"
        );
        // Health checks keep reading the same value: it stays stale.
        sleep(secs(30)).await;
        assert!(!cluster.status().protocol.connected, "still stale");
        // A new value: connected again at the next health check.
        let changed = Instant::now();
        put(&remote.store, keys::HEARTBEAT.into(), "h2").await;
        status.wait_for(|s| s.protocol.ready).await.unwrap();
        assert!(Instant::now() - changed <= HEALTH);
        // And stale again two intervals after that value was first read, unless it changes.
        let back = Instant::now();
        status.wait_for(|s| !s.protocol.connected).await.unwrap();
        assert_eq!(Instant::now() - back, secs(20));
        while let Ok(e) = rx.try_recv() {
            assert!(!is_delete(&e.event), "nothing is deleted: {e:?}");
        }
        let s = cluster.status();
        assert_eq!((s.nodes, s.endpoints, s.identities), (1, 1, 1));
    })
    .await
    .expect("test timed out");
}

/// With a service cache TTL, a remote unreachable for exactly the TTL has its services withdrawn
/// while its nodes, ipcache entries and identities stay; they are handed back when it returns.
#[tokio::test(start_paused = true)]
async fn the_service_cache_ttl_withdraws_services_only_and_hands_them_back() {
    timeout(LIMIT, async {
        let remote = Remote::new();
        put(&remote.store, keys::HEARTBEAT.into(), "h1").await;
        publish_c2(&remote.store, 2).await;
        publish_entries(&remote.store, 2, true).await;
        let protocol = Timing {
            service_cache_ttl: Some(secs(30)),
            // The heartbeat never changes here; keep staleness out of this test.
            heartbeat_interval: secs(3600),
            ..Timing::default()
        };
        let (cluster, mut rx, _ids) = spawn_c2(&remote, timing(protocol));
        let mut status = cluster.subscribe();
        let initial = until_synced(&mut rx).await;
        assert!(
            initial
                .iter()
                .any(|e| matches!(e, RemoteEvent::ServiceUpsert(s) if s.name == "web"))
        );

        remote.set_up(false);
        status.wait_for(|s| !s.protocol.connected).await.unwrap();
        let lost = Instant::now();
        // Nothing happens until the TTL; then only the service goes.
        assert_eq!(
            next(&mut rx).await,
            RemoteEvent::ServiceDelete("default/web".into())
        );
        assert_eq!(Instant::now() - lost, secs(30), "withdrawn after the TTL");
        sleep(secs(120)).await;
        if let Ok(e) = rx.try_recv() {
            panic!("only the service is withdrawn, got {e:?}");
        }
        let s = cluster.status();
        assert_eq!((s.nodes, s.endpoints, s.identities), (1, 1, 1), "{s:?}");

        // Back: the service returns at the next health check, the rest never left.
        remote.set_up(true);
        let back = Instant::now();
        loop {
            let e = next(&mut rx).await;
            assert!(!is_delete(&e), "nothing is deleted on return: {e:?}");
            if let RemoteEvent::ServiceUpsert(s) = e {
                assert_eq!(s.name, "web");
                break;
            }
        }
        assert!(Instant::now() - back <= HEALTH);
        assert!(cluster.status().protocol.connected);
    })
    .await
    .expect("test timed out");
}

/// Connection attempts to an unreachable remote are spaced 1, 2, 4, 8, 16 then 30 s apart; the
/// attempt after the remote returns connects.
#[tokio::test(start_paused = true)]
async fn reconnects_back_off_from_one_second_to_thirty() {
    timeout(LIMIT, async {
        let remote = Remote::new();
        publish_c2(&remote.store, 2).await;
        remote.set_up(false);
        let (cluster, mut rx, _ids) = spawn_c2(&remote, timing(Timing::default()));
        let mut status = cluster.subscribe();
        status.wait_for(|s| s.protocol.failures >= 8).await.unwrap();
        let connects = remote.connects();
        let gaps: Vec<Duration> = connects.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps,
            [1, 2, 4, 8, 16, 30, 30].map(secs),
            "attempts at {connects:?}"
        );
        assert!(!cluster.status().protocol.connected);
        // The remote returns: the next attempt, 30 s after the last, connects.
        remote.set_up(true);
        status.wait_for(|s| s.protocol.connected).await.unwrap();
        let last = *remote.connects().last().unwrap();
        assert_eq!(last - connects[connects.len() - 1], secs(30));
        assert_eq!(Instant::now(), last, "connected at that attempt");
        assert!(matches!(
            next(&mut rx).await,
            RemoteEvent::ClusterConfig { cluster_id: 2 }
        ));
    })
    .await
    .expect("test timed out");
}

/// The id of a remote's entries comes from its cluster config, announced before its first
/// entry: at the first connection, across an outage (nothing contradicts it), and when its
/// configuration file changes and it is followed anew (its config now says another id).
#[tokio::test(start_paused = true)]
async fn the_cluster_config_comes_before_any_entry_also_after_a_reconnect() {
    timeout(LIMIT, async {
        let remote = Remote::new();
        put(&remote.store, keys::HEARTBEAT.into(), "h1").await;
        publish_c2(&remote.store, 7).await;
        publish_entries(&remote.store, 7, false).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c2"), "endpoints:\n- http://remote\n").unwrap();
        let (tx, mut rx) = mpsc::channel(1000);
        let protocol = Timing {
            heartbeat_interval: secs(3600),
            ..Timing::default()
        };
        let mesh = ClusterMesh::spawn_with(
            Arc::new(remote.clone()),
            dir.path(),
            c1(),
            tx,
            timing(protocol),
            secs(1),
        );
        let events = until_synced(&mut rx).await;
        assert_eq!(events[0], RemoteEvent::ClusterConfig { cluster_id: 7 });
        assert!(
            events[1..]
                .iter()
                .any(|e| matches!(e, RemoteEvent::NodeUpsert(_)))
        );
        assert!(
            events[1..]
                .iter()
                .any(|e| matches!(e, RemoteEvent::IpUpsert(_)))
        );
        let connected = || mesh.status().remotes["c2"].protocol.connected;

        // An outage: the remote comes back with a new node; its entries still belong to 7.
        remote.set_up(false);
        while connected() {
            sleep(secs(1)).await;
        }
        put(
            &remote.store,
            format!("{}n2", StateKind::Nodes.state_prefix("c2")),
            r#"{"Name":"n2","Cluster":"c2","ClusterID":7}"#,
        )
        .await;
        remote.set_up(true);
        loop {
            match next(&mut rx).await {
                RemoteEvent::NodeUpsert(n) if n.name == "n2" => {
                    assert_eq!(n.cluster_id, 7);
                    break;
                }
                e @ (RemoteEvent::ClusterConfig { .. } | RemoteEvent::Drained) => {
                    panic!("the remote was not reset by an outage: {e:?}")
                }
                _ => {}
            }
        }

        // The remote is rebuilt as cluster 9 and its configuration file changes: it is drained,
        // then followed anew, and 9 is announced before any of its entries.
        remote.store.delete_prefix("cilium/state/").await.unwrap();
        publish_c2(&remote.store, 9).await;
        publish_entries(&remote.store, 9, false).await;
        std::fs::write(
            dir.path().join("c2"),
            "endpoints:\n- http://remote\n# rebuilt as cluster 9\n",
        )
        .unwrap();
        while next(&mut rx).await != RemoteEvent::Drained {}
        let events = until_synced(&mut rx).await;
        assert_eq!(
            events[0],
            RemoteEvent::ClusterConfig { cluster_id: 9 },
            "{events:?}"
        );
        assert!(
            events.iter().filter(|e| is_entry(e)).count() >= 3,
            "{events:?}"
        );
        for e in &events {
            if let RemoteEvent::NodeUpsert(n) = e {
                assert_eq!(n.cluster_id, 9);
            }
        }
    })
    .await
    .expect("test timed out");
}
