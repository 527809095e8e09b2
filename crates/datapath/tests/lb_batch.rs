#![allow(clippy::unwrap_used)]
//! Batched load-balancer programming against live maps in a private bpffs: a frontend with
//! 10,000 backends is programmed and re-programmed (only what differs is written), and a
//! reader on a second handle of the pinned maps, running while the frontend is re-programmed
//! again and again, never finds a slot within the master entry's count that points nowhere.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use aya::maps::{HashMap, Map, MapData};
use plexus_datapath::{
    Datapath, EbpfDatapath, Frontend, L4Proto, LbService, NodeConfig, RoutingMode,
    object::{MAP_LB_BACKENDS, MAP_LB_SERVICES},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 1);

fn frontend() -> Frontend {
    Frontend {
        addr: VIP,
        port: 80,
        proto: L4Proto::Tcp,
    }
}

fn load(fs: &common::Bpffs) -> EbpfDatapath {
    EbpfDatapath::load_unattached(
        NodeConfig {
            node_ip: Ipv4Addr::new(192, 168, 78, 1),
            routing: RoutingMode::Tunnel,
            gateway_ip: Ipv4Addr::new(10, 61, 1, 1),
            cluster_id: 1,
            tunnel_ifname: "unused".into(),
            pin_dir: fs.path().join("node"),
            encryption: Default::default(),
        },
        78,
    )
    .unwrap()
}

/// The `i`-th backend address (10.200.0.0/16 and up, port 8080).
fn backend(i: usize) -> SocketAddrV4 {
    let a = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + 1 + i as u32;
    SocketAddrV4::new(Ipv4Addr::from(a), 8080)
}

fn service(
    active: impl Iterator<Item = usize>,
    inactive: impl Iterator<Item = usize>,
) -> LbService {
    LbService {
        frontend: frontend(),
        active: active.map(backend).collect(),
        inactive: inactive.map(backend).collect(),
    }
}

fn entries(dp: &EbpfDatapath, map: &str) -> u64 {
    dp.map_usage()
        .unwrap()
        .into_iter()
        .find(|u| u.map == map)
        .unwrap()
        .entries
}

#[test]
fn ten_thousand_backends_are_programmed_and_only_differences_rewritten() {
    let fs = common::Bpffs::new();
    let dp = load(&fs);

    let all = service(0..10_000, std::iter::empty());
    dp.upsert_service(&all).unwrap();
    assert_eq!(
        dp.services().unwrap(),
        vec![all.clone()],
        "read back from the maps"
    );
    assert_eq!(
        entries(&dp, MAP_LB_SERVICES),
        10_001,
        "master + 10,000 slots"
    );
    assert_eq!(entries(&dp, MAP_LB_BACKENDS), 10_000);

    // One backend replaced in the middle.
    let mut one = all.clone();
    one.active[5_000] = backend(20_000);
    dp.upsert_service(&one).unwrap();
    assert_eq!(dp.services().unwrap(), vec![one.clone()]);
    assert_eq!(entries(&dp, MAP_LB_BACKENDS), 10_000);

    // Shrink, with some of the dropped ones standing by (inactive).
    let shrunk = service(2_000..7_000, 0..100);
    dp.upsert_service(&shrunk).unwrap();
    assert_eq!(dp.services().unwrap(), vec![shrunk.clone()]);
    assert_eq!(entries(&dp, MAP_LB_SERVICES), 5_001);
    assert_eq!(entries(&dp, MAP_LB_BACKENDS), 5_100);

    // A restarted datapath on the same pins reads the same back, and keeps the ids.
    drop(dp);
    let dp = load(&fs);
    assert_eq!(dp.services().unwrap(), vec![shrunk.clone()]);
    dp.upsert_service(&all).unwrap();
    assert_eq!(dp.services().unwrap(), vec![all]);

    dp.remove_service(frontend()).unwrap();
    assert!(dp.services().unwrap().is_empty());
    assert_eq!(entries(&dp, MAP_LB_SERVICES), 0);
    assert_eq!(entries(&dp, MAP_LB_BACKENDS), 0);
}

/// `struct lb_service_key` (bpf/lib/common.h): address, port (network order), protocol, pad,
/// slot (host order), pad.
fn slot_key(slot: u16) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[0..4].copy_from_slice(&VIP.octets());
    k[4..6].copy_from_slice(&80u16.to_be_bytes());
    k[6] = 6;
    k[8..10].copy_from_slice(&slot.to_ne_bytes());
    k
}

/// `struct lb_service_value`: backend id, service id, count.
fn backend_id(v: &[u8; 12]) -> u32 {
    u32::from_ne_bytes([v[0], v[1], v[2], v[3]])
}

fn count(v: &[u8; 12]) -> u16 {
    u16::from_ne_bytes([v[8], v[9]])
}

type Services = HashMap<MapData, [u8; 12], [u8; 12]>;
type Backends = HashMap<MapData, u32, [u8; 12]>;

fn open(pin_dir: &Path) -> (Services, Backends) {
    let data = |name: &str| MapData::from_pin(pin_dir.join(name)).unwrap();
    (
        Map::HashMap(data(MAP_LB_SERVICES)).try_into().unwrap(),
        Map::HashMap(data(MAP_LB_BACKENDS)).try_into().unwrap(),
    )
}

/// What the reader saw.
#[derive(Default, Debug)]
struct Seen {
    /// Walks of every slot of a master entry that saw no change while walking.
    complete: u64,
    /// Walks cut short because the frontend changed under them (not a fault).
    raced: u64,
    /// Slots within the count that were missing or pointed to a missing backend, while the
    /// master entry stayed the same.
    dangling: Vec<String>,
}

/// Walks the frontend's slots as a packet would, until `stop`. A missing slot or backend is a
/// fault only if, read again afterwards, the master entry (and the slot) are still the same:
/// every version the writer programs has a count of its own, so an unchanged master means the
/// frontend did not change in between.
fn read_until(
    services: &Services,
    backends: &Backends,
    stop: &AtomicBool,
    walks: &AtomicU64,
) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok(master) = services.get(&slot_key(0), 0) else {
            continue;
        };
        let same_master = || services.get(&slot_key(0), 0).ok() == Some(master);
        let mut complete = true;
        for s in 1..=count(&master) {
            match services.get(&slot_key(s), 0) {
                Err(_) => {
                    if same_master() {
                        seen.dangling
                            .push(format!("slot {s} of {} missing", count(&master)));
                    }
                    complete = false;
                    break;
                }
                Ok(slot) => {
                    let bid = backend_id(&slot);
                    if backends.get(&bid, 0).is_err() {
                        let same_slot = services.get(&slot_key(s), 0).ok() == Some(slot);
                        if same_slot && same_master() {
                            seen.dangling.push(format!(
                                "slot {s} of {} points to missing backend {bid}",
                                count(&master)
                            ));
                        }
                        complete = false;
                        break;
                    }
                }
            }
        }
        if complete {
            seen.complete += 1;
        } else {
            seen.raced += 1;
        }
        walks.fetch_add(1, Ordering::SeqCst);
    }
    seen
}

#[test]
fn a_concurrent_reader_never_finds_a_slot_pointing_nowhere() {
    let fs = common::Bpffs::new();
    let dp = load(&fs);
    let (services, backends) = open(&fs.path().join("node"));

    // Versions alternate between large and small, each with a count of its own, over
    // windows of addresses that move, so every update adds, rewrites and deletes slots and
    // backends.
    const VERSIONS: usize = 12;
    let version = |k: usize| {
        let n = if k.is_multiple_of(2) {
            6_000 + k
        } else {
            1_000 + k
        };
        let from = k * 700;
        service(from..from + n, from + n..from + n + 50)
    };
    dp.upsert_service(&version(0)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, walks) = (stop.clone(), walks.clone());
        thread::spawn(move || read_until(&services, &backends, &stop, &walks))
    };
    for k in 1..=VERSIONS {
        // Each update starts while the reader is walking (it ends a walk after the previous
        // update and starts the next one at once).
        let before = walks.load(Ordering::SeqCst);
        while walks.load(Ordering::SeqCst) == before {
            thread::yield_now();
        }
        let v = version(k);
        dp.upsert_service(&v).unwrap();
        assert_eq!(dp.services().unwrap(), vec![v]);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    eprintln!(
        "reader: {} complete walks, {} cut short by a change",
        seen.complete, seen.raced
    );
    assert!(
        seen.dangling.is_empty(),
        "{} dangling slots seen, the first: {:?}",
        seen.dangling.len(),
        &seen.dangling[..seen.dangling.len().min(5)]
    );
    assert!(
        seen.complete + seen.raced >= VERSIONS as u64,
        "the reader walked the slots"
    );

    dp.remove_service(frontend()).unwrap();
    assert!(dp.services().unwrap().is_empty());
}
