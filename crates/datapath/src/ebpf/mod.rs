//! The real datapath: the programs of `bpf/` loaded with aya.
//!
//! [`EbpfDatapath::load`] must run inside the node's network namespace (the caller enters it;
//! later calls that attach programs must run there too). It
//!
//! 1. loads the embedded object with every map pinned by name under `pin_dir`, reusing maps a
//!    previous agent pinned there (their content survives a restart);
//! 2. writes `PLEXUS_CONFIG` (with the encryption flags, so a restarted agent's strict mode
//!    holds from the first packet);
//! 3. creates the VXLAN device (collect-metadata mode, UDP 8472, MTU 1450 for a 1500-byte
//!    underlay) unless it exists, and attaches `from_overlay` to its ingress;
//! 4. moves every tc link a previous agent pinned to the new programs;
//! 5. rebuilds its copy of the load-balancing maps (service and backend ids) from the pinned
//!    ones, so that established connections keep their backends;
//! 6. reads the `PLEXUS_EVENTS` ring buffer in a thread and broadcasts decoded events; what the
//!    programs could not write to a full buffer they count in `PLEXUS_EVENTS_LOST`
//!    ([`Datapath::events_lost`]).
//!
//! # Attachments and restarts
//!
//! Programs are attached with TCX links (`BPF_LINK_CREATE`, **Linux >= 6.6**), each pinned
//! at `<pin_dir>/links/<program>-if<ifindex>`. A pinned link stays attached after the agent
//! exits, so traffic keeps flowing with the old programs and the pinned maps. A new agent
//! opens the pinned links and replaces their program atomically (`BPF_LINK_UPDATE`): there is
//! no moment without a program. Legacy clsact filters were the alternative for older kernels;
//! they are not implemented.
//!
//! A reused map also keeps the size it was created with ([`crate::capacity`]: the configured
//! size applies to maps created anew; a differing pinned one is kept, with a warning).
//!
//! A reused map keeps the layout it was created with: loading refuses pinned maps whose key or
//! value size differs from this build's; changing a struct in `bpf/lib/common.h` needs a
//! migration (or a new pin directory).

mod batch;
mod links;
mod missing;
pub mod netdev;
pub mod pinned;
mod reader;
mod services;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions},
};
use tokio::sync::broadcast;

use crate::{
    Datapath, DatapathError, Direction, DropReason, EVENT_CHANNEL_CAPACITY, Endpoint, Frontend,
    IpcacheValue, LbService, MapSizes, MapUsage, Metric, MonitorEvent, NodeConfig, Prefix,
    abi::{
        self, ConfigBytes, CtEntryBytes, CtKeyBytes, EndpointBytes, IpcacheBytes, LbBackendBytes,
        LbServiceKeyBytes, LbServiceValueBytes, MetricsKeyBytes, MetricsValueBytes,
    },
    bpffs,
    object::{
        MAP_CONFIG, MAP_CT, MAP_DNS_REDIRECT, MAP_ENDPOINTS, MAP_EVENTS, MAP_EVENTS_LOST,
        MAP_IPCACHE, MAP_LB_BACKENDS, MAP_LB_SERVICES, MAP_METRICS, MAP_POLICY, MAP_POLICY_CIDR,
        MAP_POLICY_ENFORCE, MAP_WG_PEERS, PLEXUS_BPF_OBJECT, PROG_FROM_CONTAINER,
        PROG_FROM_OVERLAY, PROG_TO_CONTAINER, PROGRAMS,
    },
    validate_endpoint, validate_ipcache,
};
use services::{LbOp, LbTables};

/// The result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (a `TC_ACT_*` verdict).
    pub verdict: u32,
    /// The packet as the program left it.
    pub frame: Vec<u8>,
    /// `skb->mark` as the program left it.
    pub mark: u32,
}

/// Size of `struct __sk_buff`, the context of tc programs.
const SK_BUFF_CTX_SIZE: usize = 192;
/// Offset of `mark` in `struct __sk_buff`.
const SK_BUFF_MARK_OFFSET: usize = 8;

/// tc verdicts, as `BPF_PROG_TEST_RUN` reports them.
pub mod verdict {
    /// `TC_ACT_OK`: continue in the stack.
    pub const OK: u32 = 0;
    /// `TC_ACT_SHOT`: dropped.
    pub const SHOT: u32 = 2;
    /// `TC_ACT_REDIRECT`: redirected to another device.
    pub const REDIRECT: u32 = 7;
}

struct State {
    ebpf: Ebpf,
    endpoints: HashMap<MapData, [u8; 4], EndpointBytes>,
    ipcache: LpmTrie<MapData, [u8; 4], IpcacheBytes>,
    metrics: PerCpuHashMap<MapData, MetricsKeyBytes, MetricsValueBytes>,
    /// `PLEXUS_EVENTS_LOST[0]`, per CPU.
    events_lost: PerCpuArray<MapData, u64>,
    lb_services: HashMap<MapData, LbServiceKeyBytes, LbServiceValueBytes>,
    lb_backends: HashMap<MapData, u32, LbBackendBytes>,
    conntrack: HashMap<MapData, CtKeyBytes, CtEntryBytes>,
    /// The agent's copy of the two load-balancing maps.
    lb: LbTables,
    policy: LpmTrie<MapData, crate::policy::PolicyKeyData, [u8; 4]>,
    policy_enforce: HashMap<MapData, u32, [u8; 4]>,
    /// What the policy maps hold, per endpoint (read back at load).
    policies: crate::PolicyTables,
    /// Prefixes policies name, to their CIDR identities (octets of the address, identity).
    policy_cidr: LpmTrie<MapData, [u8; 4], u32>,
    /// Node addresses (octets) with a configured WireGuard peer.
    wg_peers: HashMap<MapData, [u8; 4], u32>,
    dns_redirect: HashMap<MapData, u32, u32>,
}

/// The eBPF datapath of one node. Dropping it stops the event reader; the attached programs
/// and pinned maps stay (see the module documentation).
pub struct EbpfDatapath {
    state: Mutex<State>,
    events: broadcast::Sender<MonitorEvent>,
    config: NodeConfig,
    links_dir: PathBuf,
    tunnel_ifindex: u32,
    attach: bool,
    reader: reader::Reader,
    /// The sized maps and the `max_entries` the kernel has for each (the pinned map's).
    capacities: Vec<(&'static str, u32)>,
    /// Read-only handles of the sized maps, outside the state's lock: counting their entries
    /// walks every key and must not hold up writers.
    counters: Counters,
}

/// Second handles of the sized maps (opened from their pins), for counting entries.
struct Counters {
    ipcache: LpmTrie<MapData, [u8; 4], IpcacheBytes>,
    lb_services: HashMap<MapData, LbServiceKeyBytes, LbServiceValueBytes>,
    lb_backends: HashMap<MapData, u32, LbBackendBytes>,
    conntrack: HashMap<MapData, CtKeyBytes, CtEntryBytes>,
    policy: LpmTrie<MapData, crate::policy::PolicyKeyData, [u8; 4]>,
}

impl Counters {
    fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let data = |name: &'static str| {
            aya::maps::MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))
        };
        Ok(Self {
            ipcache: aya::maps::Map::LpmTrie(data(MAP_IPCACHE)?)
                .try_into()
                .map_err(map_err(MAP_IPCACHE))?,
            lb_services: aya::maps::Map::HashMap(data(MAP_LB_SERVICES)?)
                .try_into()
                .map_err(map_err(MAP_LB_SERVICES))?,
            lb_backends: aya::maps::Map::HashMap(data(MAP_LB_BACKENDS)?)
                .try_into()
                .map_err(map_err(MAP_LB_BACKENDS))?,
            conntrack: aya::maps::Map::LruHashMap(data(MAP_CT)?)
                .try_into()
                .map_err(map_err(MAP_CT))?,
            policy: aya::maps::Map::LpmTrie(data(MAP_POLICY)?)
                .try_into()
                .map_err(map_err(MAP_POLICY))?,
        })
    }
}

impl std::fmt::Debug for EbpfDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDatapath")
            .field("config", &self.config)
            .field("tunnel_ifindex", &self.tunnel_ifindex)
            .field("attach", &self.attach)
            .finish_non_exhaustive()
    }
}

/// The error of an operation on `map`: [`DatapathError::MapFull`] when the kernel refused a
/// new entry for lack of room, [`DatapathError::Map`] otherwise.
fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |e| match &e {
        MapError::SyscallError(s)
            if s.io_error
                .raw_os_error()
                .is_some_and(crate::capacity::is_full_errno) =>
        {
            DatapathError::MapFull { map }
        }
        _ => DatapathError::Map {
            map,
            source: Box::new(e),
        },
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or_else(|| DatapathError::Invalid {
        what: format!("map {name}"),
        reason: "missing from the BPF object".into(),
    })
}

/// Key and value sizes this build expects of each pinned map (see `bpf/lib/common.h`).
const MAP_LAYOUTS: [(&str, u32, u32); 13] = [
    (MAP_IPCACHE, 8, 12),
    (MAP_ENDPOINTS, 4, 24),
    (MAP_CONFIG, 4, 64),
    (MAP_METRICS, 4, 16),
    (MAP_LB_SERVICES, 12, 12),
    (MAP_LB_BACKENDS, 4, 12),
    (MAP_CT, 16, 32),
    (MAP_POLICY, 16, 4),
    (MAP_POLICY_ENFORCE, 4, 4),
    (MAP_POLICY_CIDR, 8, 4),
    (MAP_WG_PEERS, 4, 4),
    (MAP_EVENTS_LOST, 4, 8),
    (MAP_DNS_REDIRECT, 4, 4),
];

/// Refuses maps pinned by a build with another layout: reusing them would corrupt entries.
fn check_pinned_layouts(pin_dir: &Path) -> Result<(), DatapathError> {
    for (name, key, value) in MAP_LAYOUTS {
        let path = pin_dir.join(name);
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) if missing::is_missing_entry(&e) => continue,
            Err(e) => return Err(map_err(name)(e)),
        };
        if (info.key_size(), info.value_size()) != (key, value) {
            return Err(DatapathError::Invalid {
                what: format!("pinned map {}", path.display()),
                reason: format!(
                    "key/value sizes {}/{} but this build expects {key}/{value}; \
                     remove the pin or migrate it",
                    info.key_size(),
                    info.value_size()
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a size of 0 (the kernel would refuse the map with a less helpful error).
fn check_sizes(sizes: &MapSizes) -> Result<(), DatapathError> {
    for (name, size) in sizes.per_map() {
        if size == 0 {
            return Err(DatapathError::Invalid {
                what: format!("size of map {name}"),
                reason: "a map needs room for at least one entry".into(),
            });
        }
    }
    Ok(())
}

/// The `max_entries` of each sized map pinned under `pin_dir`; warns about each whose size
/// differs from `sizes` (it is kept: see [`crate::capacity`]).
fn pinned_capacities(
    pin_dir: &Path,
    sizes: &MapSizes,
) -> Result<Vec<(&'static str, u32)>, DatapathError> {
    let mut out = Vec::new();
    for (name, configured) in sizes.per_map() {
        let path = pin_dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        let pinned = info.max_entries();
        if pinned != configured {
            tracing::warn!(
                map = name,
                pinned,
                configured,
                path = %path.display(),
                "keeping the pinned map with its size; the configured size applies when the \
                 map is created again (uninstall the datapath or use a new pin directory)"
            );
        }
        out.push((name, pinned));
    }
    Ok(out)
}

/// The policy maps' contents, per endpoint.
fn read_policies(
    policy: &LpmTrie<MapData, crate::policy::PolicyKeyData, [u8; 4]>,
    enforce: &HashMap<MapData, u32, [u8; 4]>,
) -> Result<crate::PolicyTables, DatapathError> {
    let mut out = crate::PolicyTables::new();
    for item in enforce.iter() {
        let (ep, flags) = item.map_err(map_err(MAP_POLICY_ENFORCE))?;
        let Ok(ep) = u16::try_from(ep) else { continue };
        // 2 (deny entries only) is not enforcement: it follows from the entries.
        out.entry(ep).or_default().0 = (flags[0] == 1, flags[1] == 1);
    }
    for item in policy.iter() {
        let (key, value) = item.map_err(map_err(MAP_POLICY))?;
        if let Some((ep, k)) = crate::policy::decode_key(key.prefix_len(), &key.data()) {
            out.entry(ep).or_default().1.insert(k, value[0] != 0);
        }
    }
    Ok(out)
}

/// Rewrites the entries whose value lacks the match kind this build writes (entries of an
/// earlier agent): policy verdicts report the kind from the value.
fn upgrade_policy_values(
    policy: &mut LpmTrie<MapData, crate::policy::PolicyKeyData, [u8; 4]>,
) -> Result<usize, DatapathError> {
    let mut stale = Vec::new();
    for item in policy.iter() {
        let (key, value) = item.map_err(map_err(MAP_POLICY))?;
        if let Some((_, k)) = crate::policy::decode_key(key.prefix_len(), &key.data()) {
            let wanted = crate::policy::encode_value(&k, value[0] != 0);
            if value != wanted {
                stale.push((key, wanted));
            }
        }
    }
    for (key, value) in &stale {
        policy.insert(key, value, 0).map_err(map_err(MAP_POLICY))?;
    }
    Ok(stale.len())
}

fn device_pin_name(ifindex: u32) -> String {
    format!("if{ifindex}")
}

impl EbpfDatapath {
    /// Loads the datapath for this node (see the module documentation). Must run inside the
    /// node's network namespace, with `config.pin_dir` on a bpffs.
    pub fn load(config: NodeConfig) -> Result<Self, DatapathError> {
        Self::open(config, None, MapSizes::default())
    }

    /// [`EbpfDatapath::load`] with the sized maps created with `sizes` (see
    /// [`crate::capacity`]; maps already pinned keep their size).
    pub fn load_with(config: NodeConfig, sizes: MapSizes) -> Result<Self, DatapathError> {
        Self::open(config, None, sizes)
    }

    /// Loads the programs and pinned maps and writes the configuration with the given tunnel
    /// device index, but creates no device and attaches nothing, not even when endpoints are
    /// upserted. For `BPF_PROG_TEST_RUN` ([`EbpfDatapath::test_run`]) and offline tools.
    pub fn load_unattached(config: NodeConfig, tunnel_ifindex: u32) -> Result<Self, DatapathError> {
        Self::open(config, Some(tunnel_ifindex), MapSizes::default())
    }

    /// [`EbpfDatapath::load_unattached`] with the sized maps created with `sizes`.
    pub fn load_unattached_with(
        config: NodeConfig,
        tunnel_ifindex: u32,
        sizes: MapSizes,
    ) -> Result<Self, DatapathError> {
        Self::open(config, Some(tunnel_ifindex), sizes)
    }

    fn open(
        config: NodeConfig,
        unattached: Option<u32>,
        sizes: MapSizes,
    ) -> Result<Self, DatapathError> {
        check_sizes(&sizes)?;
        let pin_dir = config.pin_dir.clone();
        fs::create_dir_all(&pin_dir).map_err(io_err(&pin_dir))?;
        bpffs::require_bpffs(&pin_dir)?;
        let links_dir = pin_dir.join("links");
        fs::create_dir_all(&links_dir).map_err(io_err(&links_dir))?;

        check_pinned_layouts(&pin_dir)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        for (name, size) in sizes.per_map() {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(PLEXUS_BPF_OBJECT)
            .map_err(|e| DatapathError::Load {
                pin_dir: pin_dir.clone(),
                source: Box::new(e),
            })?;
        let capacities = pinned_capacities(&pin_dir, &sizes)?;
        let counters = Counters::open(&pin_dir)?;
        for program in PROGRAMS {
            let prog = classifier(&mut ebpf, program)?;
            prog.load().map_err(|e| DatapathError::Program {
                program,
                source: Box::new(e),
            })?;
        }

        let tunnel_ifindex = match unattached {
            Some(index) => index,
            None => netdev::ensure_vxlan(&config.tunnel_ifname)?,
        };
        let mut cfg_map: Array<MapData, ConfigBytes> = take_map(&mut ebpf, MAP_CONFIG)?
            .try_into()
            .map_err(map_err(MAP_CONFIG))?;
        cfg_map
            .set(0, abi::encode_config(&config, tunnel_ifindex), 0)
            .map_err(map_err(MAP_CONFIG))?;

        let endpoints = take_map(&mut ebpf, MAP_ENDPOINTS)?
            .try_into()
            .map_err(map_err(MAP_ENDPOINTS))?;
        let ipcache = take_map(&mut ebpf, MAP_IPCACHE)?
            .try_into()
            .map_err(map_err(MAP_IPCACHE))?;
        let metrics = take_map(&mut ebpf, MAP_METRICS)?
            .try_into()
            .map_err(map_err(MAP_METRICS))?;
        let ring: RingBuf<MapData> = take_map(&mut ebpf, MAP_EVENTS)?
            .try_into()
            .map_err(map_err(MAP_EVENTS))?;
        let events_lost = take_map(&mut ebpf, MAP_EVENTS_LOST)?
            .try_into()
            .map_err(map_err(MAP_EVENTS_LOST))?;
        let mut lb_services = take_map(&mut ebpf, MAP_LB_SERVICES)?
            .try_into()
            .map_err(map_err(MAP_LB_SERVICES))?;
        let mut lb_backends = take_map(&mut ebpf, MAP_LB_BACKENDS)?
            .try_into()
            .map_err(map_err(MAP_LB_BACKENDS))?;
        let conntrack = take_map(&mut ebpf, MAP_CT)?
            .try_into()
            .map_err(map_err(MAP_CT))?;
        let mut policy: LpmTrie<MapData, crate::policy::PolicyKeyData, [u8; 4]> =
            take_map(&mut ebpf, MAP_POLICY)?
                .try_into()
                .map_err(map_err(MAP_POLICY))?;
        let policy_enforce: HashMap<MapData, u32, [u8; 4]> =
            take_map(&mut ebpf, MAP_POLICY_ENFORCE)?
                .try_into()
                .map_err(map_err(MAP_POLICY_ENFORCE))?;
        let policy_cidr = take_map(&mut ebpf, MAP_POLICY_CIDR)?
            .try_into()
            .map_err(map_err(MAP_POLICY_CIDR))?;
        let wg_peers = take_map(&mut ebpf, MAP_WG_PEERS)?
            .try_into()
            .map_err(map_err(MAP_WG_PEERS))?;
        let dns_redirect = take_map(&mut ebpf, MAP_DNS_REDIRECT)?
            .try_into()
            .map_err(map_err(MAP_DNS_REDIRECT))?;
        crate::proxy::ensure_routing()?;
        let upgraded = upgrade_policy_values(&mut policy)?;
        if upgraded > 0 {
            tracing::info!(
                entries = upgraded,
                "wrote the match kind into policy entries"
            );
        }
        let policies = read_policies(&policy, &policy_enforce)?;
        let (lb, garbage) = read_lb_tables(&lb_services, &lb_backends)?;
        if !garbage.is_empty() {
            tracing::info!(
                entries = garbage.len(),
                "removing load-balancing entries left by an interrupted update"
            );
            apply_lb_ops(&mut lb_services, &mut lb_backends, &garbage)?;
        }

        if unattached.is_none() {
            let taken = links::take_over_all(&mut ebpf, &links_dir)?;
            if !taken.is_empty() {
                tracing::info!(links = taken.len(), "took over pinned tc links");
            }
            links::attach_pinned(
                &mut ebpf,
                &links_dir,
                PROG_FROM_OVERLAY,
                &config.tunnel_ifname,
                &device_pin_name(tunnel_ifindex),
                TcAttachType::Ingress,
            )?;
        }

        let events = broadcast::channel(EVENT_CHANNEL_CAPACITY).0;
        let reader = reader::Reader::spawn(ring, events.clone()).map_err(io_err(&pin_dir))?;
        Ok(Self {
            state: Mutex::new(State {
                ebpf,
                endpoints,
                ipcache,
                metrics,
                events_lost,
                lb_services,
                lb_backends,
                conntrack,
                lb,
                policy,
                policy_enforce,
                policies,
                policy_cidr,
                wg_peers,
                dns_redirect,
            }),
            events,
            config,
            links_dir,
            tunnel_ifindex,
            attach: unattached.is_none(),
            reader,
            capacities,
            counters,
        })
    }

    /// The configuration this datapath was loaded with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Index of the VXLAN device.
    pub fn tunnel_ifindex(&self) -> u32 {
        self.tunnel_ifindex
    }

    /// Stops reading the ring buffer until [`EbpfDatapath::resume_events`]; returns once the
    /// reader has stopped. Meanwhile the buffer fills and, full, loses events (counted in
    /// [`Datapath::events_lost`]). For tests and diagnosis.
    pub fn pause_events(&self) {
        self.reader.pause();
    }

    /// Reads the ring buffer again after [`EbpfDatapath::pause_events`].
    pub fn resume_events(&self) {
        self.reader.resume();
    }

    /// How many entries the conntrack map holds, expired ones that the LRU has not reclaimed
    /// yet included (two per load-balanced connection: client to frontend, and the reply).
    pub fn conntrack_entries(&self) -> Result<usize, DatapathError> {
        let st = self.lock();
        let mut n = 0;
        for key in st.conntrack.keys() {
            key.map_err(map_err(MAP_CT))?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs `program` once on `frame` with `BPF_PROG_TEST_RUN`, `skb->mark` set to `mark`
    /// (the maps are the live ones; the packet arrives on the loopback device, index 1).
    pub fn test_run(
        &self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
    ) -> Result<TestRunOutput, DatapathError> {
        let mut st = self.lock();
        let prog = classifier(&mut st.ebpf, program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx_in = [0u8; SK_BUFF_CTX_SIZE];
        ctx_in[SK_BUFF_MARK_OFFSET..SK_BUFF_MARK_OFFSET + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SK_BUFF_CTX_SIZE];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::default()
            })
            .map_err(|e| DatapathError::Program {
                program,
                source: Box::new(e),
            })?;
        out.truncate(res.data_size_out as usize);
        let mut mark_out = [0u8; 4];
        mark_out.copy_from_slice(&ctx_out[SK_BUFF_MARK_OFFSET..SK_BUFF_MARK_OFFSET + 4]);
        Ok(TestRunOutput {
            verdict: res.return_value,
            frame: out,
            mark: u32::from_ne_bytes(mark_out),
        })
    }

    /// Runs `program` on `frame` `repeat` times in the kernel (`BPF_PROG_TEST_RUN`); the
    /// verdict and the average time of one run, as the kernel measured it.
    pub fn test_run_repeat(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), DatapathError> {
        let mut st = self.lock();
        let prog = classifier(&mut st.ebpf, program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| DatapathError::Program {
                program,
                source: Box::new(e),
            })?;
        Ok((res.return_value, res.duration))
    }

    /// Detaches everything pinned under `pin_dir` and removes the pinned maps: the node's
    /// datapath is gone. The VXLAN device is left to its owner.
    pub fn uninstall(pin_dir: &Path) -> Result<(), DatapathError> {
        let links_dir = pin_dir.join("links");
        match fs::read_dir(&links_dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err(&links_dir))?;
                    missing::remove_pin(&entry.path())?;
                }
                match fs::remove_dir(&links_dir) {
                    Err(e) if !missing::is_missing_file(&e) => {
                        return Err(io_err(&links_dir)(e));
                    }
                    _ => {}
                }
            }
            Err(e) if missing::is_missing_file(&e) => {}
            Err(e) => return Err(io_err(&links_dir)(e)),
        }
        for map in crate::object::MAPS {
            missing::remove_pin(&pin_dir.join(map))?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Map handles cannot be left half-updated by a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn detach_device(&self, ifindex: u32) -> Result<(), DatapathError> {
        for program in [PROG_FROM_CONTAINER, PROG_TO_CONTAINER] {
            links::detach_pinned(&self.links_dir, program, &device_pin_name(ifindex))?;
        }
        Ok(())
    }
}

impl Datapath for EbpfDatapath {
    fn upsert_endpoint(&self, ep: &Endpoint) -> Result<(), DatapathError> {
        validate_endpoint(ep)?;
        let ifindex = if ep.host_ifindex != 0 {
            ep.host_ifindex
        } else {
            netdev::ifindex(&ep.host_ifname)?
        };
        let mut st = self.lock();
        let key = ep.ipv4.octets();
        let previous = st.endpoints.get(&key, 0).ok();
        // The map first, so that the first packet through the programs finds the endpoint.
        st.endpoints
            .insert(key, abi::encode_endpoint(ep, ifindex), 0)
            .map_err(map_err(MAP_ENDPOINTS))?;
        if !self.attach {
            return Ok(());
        }
        let ifname = netdev::ifname(ifindex);
        if ifname.is_empty() {
            return Err(DatapathError::Netdev {
                device: format!("{} (index {ifindex})", ep.host_ifname),
                reason: "no such device".into(),
            });
        }
        if !ep.host_ifname.is_empty() && ep.host_ifname != ifname {
            return Err(DatapathError::Invalid {
                what: format!("endpoint {} ({})", ep.ipv4, ep.id),
                reason: format!(
                    "interface index {ifindex} is {ifname}, not {}",
                    ep.host_ifname
                ),
            });
        }
        let pin_name = device_pin_name(ifindex);
        for (program, attach_type) in [
            (PROG_TO_CONTAINER, TcAttachType::Egress),
            (PROG_FROM_CONTAINER, TcAttachType::Ingress),
        ] {
            links::attach_pinned(
                &mut st.ebpf,
                &self.links_dir,
                program,
                &ifname,
                &pin_name,
                attach_type,
            )?;
        }
        drop(st);
        if let Some(prev) = previous {
            let old = abi::decode_endpoint(ep.ipv4, &prev).host_ifindex;
            if old != ifindex {
                self.detach_device(old)?;
            }
        }
        Ok(())
    }

    fn remove_endpoint(&self, ipv4: Ipv4Addr) -> Result<(), DatapathError> {
        let mut st = self.lock();
        let key = ipv4.octets();
        let prev = match st.endpoints.get(&key, 0) {
            Ok(prev) => prev,
            Err(e) if missing::is_missing_entry(&e) => return Ok(()),
            Err(e) => return Err(map_err(MAP_ENDPOINTS)(e)),
        };
        missing::entry_removed(st.endpoints.remove(&key), MAP_ENDPOINTS)?;
        drop(st);
        if self.attach {
            self.detach_device(abi::decode_endpoint(ipv4, &prev).host_ifindex)?;
        }
        Ok(())
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>, DatapathError> {
        let st = self.lock();
        let mut all = Vec::new();
        for item in st.endpoints.iter() {
            let (key, value) = item.map_err(map_err(MAP_ENDPOINTS))?;
            let mut ep = abi::decode_endpoint(Ipv4Addr::from(key), &value);
            ep.host_ifname = netdev::ifname(ep.host_ifindex);
            all.push(ep);
        }
        all.sort_by_key(|e| e.ipv4);
        Ok(all)
    }

    fn upsert_ipcache(&self, prefix: Prefix, value: IpcacheValue) -> Result<(), DatapathError> {
        validate_ipcache(prefix, &value)?;
        let key = Key::new(u32::from(prefix.len), prefix.addr.octets());
        self.lock()
            .ipcache
            .insert(&key, abi::encode_ipcache(&value), 0)
            .map_err(map_err(MAP_IPCACHE))
    }

    fn remove_ipcache(&self, prefix: Prefix) -> Result<(), DatapathError> {
        let key = Key::new(u32::from(prefix.len), prefix.addr.octets());
        missing::entry_removed(self.lock().ipcache.remove(&key), MAP_IPCACHE)
    }

    fn ipcache(&self) -> Result<Vec<(Prefix, IpcacheValue)>, DatapathError> {
        let st = self.lock();
        let mut all = Vec::new();
        for item in st.ipcache.iter() {
            let (key, value) = item.map_err(map_err(MAP_IPCACHE))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            let prefix = Prefix {
                addr: Ipv4Addr::from(key.data()),
                len,
            };
            all.push((prefix, abi::decode_ipcache(&value)));
        }
        all.sort_by_key(|(p, _)| *p);
        Ok(all)
    }

    fn metrics(&self) -> Result<Vec<Metric>, DatapathError> {
        let st = self.lock();
        let mut all = Vec::new();
        for item in st.metrics.iter() {
            let (key, per_cpu) = item.map_err(map_err(MAP_METRICS))?;
            let (reason, dir) = abi::decode_metrics_key(&key);
            let Some(direction) = Direction::from_raw(dir) else {
                continue;
            };
            let (mut packets, mut bytes) = (0, 0);
            for v in per_cpu.iter() {
                let (p, b) = abi::decode_metrics_value(v);
                packets += p;
                bytes += b;
            }
            all.push(Metric {
                direction,
                drop_reason: (reason != 0).then(|| DropReason::from_raw(reason)),
                packets,
                bytes,
            });
        }
        all.sort_by_key(|m| (m.direction, m.drop_reason));
        Ok(all)
    }

    fn subscribe(&self) -> broadcast::Receiver<MonitorEvent> {
        self.events.subscribe()
    }

    fn events_lost(&self) -> Result<u64, DatapathError> {
        let per_cpu = self
            .lock()
            .events_lost
            .get(&0, 0)
            .map_err(map_err(MAP_EVENTS_LOST))?;
        Ok(per_cpu.iter().sum())
    }

    fn upsert_service(&self, service: &LbService) -> Result<(), DatapathError> {
        let mut st = self.lock();
        let ops = st.lb.upsert(service)?;
        st.apply_lb(&ops)
    }

    fn set_policy(
        &self,
        endpoint_id: u16,
        policy: &crate::policy::EndpointPolicy,
    ) -> Result<(), DatapathError> {
        let entries = crate::policy::compile(&policy.rules);
        let flags = (policy.ingress_enforced, policy.egress_enforced);
        let mut guard = self.lock();
        let st = &mut *guard;
        let old = st.policies.get(&endpoint_id).cloned().unwrap_or_default();
        // 1. New and changed entries.
        for (k, deny) in &entries {
            if old.1.get(k) == Some(deny) {
                continue;
            }
            let (len, data) = crate::policy::encode_key(endpoint_id, k);
            st.policy
                .insert(
                    &Key::new(len, data),
                    crate::policy::encode_value(k, *deny),
                    0,
                )
                .map_err(map_err(MAP_POLICY))?;
        }
        // 2. Enforcement.
        let modes = crate::policy::enforce_modes(flags, &entries);
        if modes != crate::policy::enforce_modes(old.0, &old.1)
            || !st.policies.contains_key(&endpoint_id)
        {
            st.policy_enforce
                .insert(u32::from(endpoint_id), [modes.0, modes.1, 0, 0], 0)
                .map_err(map_err(MAP_POLICY_ENFORCE))?;
        }
        // 3. Stale entries.
        for k in old.1.keys().filter(|k| !entries.contains_key(k)) {
            let (len, data) = crate::policy::encode_key(endpoint_id, k);
            missing::entry_removed(st.policy.remove(&Key::new(len, data)), MAP_POLICY)?;
        }
        st.policies.insert(endpoint_id, (flags, entries));
        Ok(())
    }

    fn remove_policy(&self, endpoint_id: u16) -> Result<(), DatapathError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some((_, entries)) = st.policies.remove(&endpoint_id) else {
            return Ok(());
        };
        missing::entry_removed(
            st.policy_enforce.remove(&u32::from(endpoint_id)),
            MAP_POLICY_ENFORCE,
        )?;
        for k in entries.keys() {
            let (len, data) = crate::policy::encode_key(endpoint_id, k);
            missing::entry_removed(st.policy.remove(&Key::new(len, data)), MAP_POLICY)?;
        }
        Ok(())
    }

    fn policies(&self) -> Result<crate::PolicyTables, DatapathError> {
        Ok(self.lock().policies.clone())
    }

    fn upsert_policy_cidr(&self, prefix: Prefix, identity: u32) -> Result<(), DatapathError> {
        crate::validate_policy_cidr(prefix, identity)?;
        let key = Key::new(u32::from(prefix.len), prefix.addr.octets());
        self.lock()
            .policy_cidr
            .insert(&key, identity, 0)
            .map_err(map_err(MAP_POLICY_CIDR))
    }

    fn remove_policy_cidr(&self, prefix: Prefix) -> Result<(), DatapathError> {
        let key = Key::new(u32::from(prefix.len), prefix.addr.octets());
        missing::entry_removed(self.lock().policy_cidr.remove(&key), MAP_POLICY_CIDR)
    }

    fn policy_cidrs(&self) -> Result<std::collections::BTreeMap<Prefix, u32>, DatapathError> {
        let st = self.lock();
        let mut all = std::collections::BTreeMap::new();
        for item in st.policy_cidr.iter() {
            let (key, identity) = item.map_err(map_err(MAP_POLICY_CIDR))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            all.insert(
                Prefix {
                    addr: Ipv4Addr::from(key.data()),
                    len,
                },
                identity,
            );
        }
        Ok(all)
    }

    fn upsert_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        self.lock()
            .wg_peers
            .insert(node.octets(), 0, 0)
            .map_err(map_err(MAP_WG_PEERS))
    }

    fn remove_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        missing::entry_removed(self.lock().wg_peers.remove(&node.octets()), MAP_WG_PEERS)
    }

    fn set_dns_redirect(
        &self,
        endpoint_id: u16,
        proxy_port: Option<u16>,
    ) -> Result<(), DatapathError> {
        let key = u32::from(endpoint_id);
        let mut st = self.lock();
        match proxy_port {
            // struct dns_redirect { __u16 port; __u16 pad; }: the port in the low half.
            Some(port) => st
                .dns_redirect
                .insert(key, u32::from_ne_bytes(abi_port(port)), 0)
                .map_err(map_err(MAP_DNS_REDIRECT)),
            None => missing::entry_removed(st.dns_redirect.remove(&key), MAP_DNS_REDIRECT),
        }
    }

    fn connected_peers(&self) -> Result<std::collections::BTreeSet<Ipv4Addr>, DatapathError> {
        // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(t.tv_nsec()).unwrap_or(0)
            })
            .unwrap_or(0);
        let st = self.lock();
        let mut out = std::collections::BTreeSet::new();
        for item in st.conntrack.iter() {
            let (key, entry) = item.map_err(map_err(MAP_CT))?;
            if let Some(peer) = abi::policy_out_peer(&key, &entry, now) {
                out.insert(peer);
            }
        }
        Ok(out)
    }

    fn map_usage(&self) -> Result<Vec<MapUsage>, DatapathError> {
        // Not under the state's lock: entries written meanwhile may or may not be counted.
        let st = &self.counters;
        let mut out = Vec::new();
        for &(map, capacity) in &self.capacities {
            let entries = match map {
                MAP_IPCACHE => count(st.ipcache.keys(), map)?,
                MAP_LB_SERVICES => count(st.lb_services.keys(), map)?,
                MAP_LB_BACKENDS => count(st.lb_backends.keys(), map)?,
                MAP_CT => count(st.conntrack.keys(), map)?,
                MAP_POLICY => count(st.policy.keys(), map)?,
                _ => continue,
            };
            out.push(MapUsage {
                map,
                entries,
                capacity: u64::from(capacity),
            });
        }
        Ok(out)
    }

    fn dns_redirects(&self) -> Result<std::collections::BTreeMap<u16, u16>, DatapathError> {
        let st = self.lock();
        let mut out = std::collections::BTreeMap::new();
        for item in st.dns_redirect.iter() {
            let (key, value) = item.map_err(map_err(MAP_DNS_REDIRECT))?;
            let b = value.to_ne_bytes();
            if let Ok(id) = u16::try_from(key) {
                out.insert(id, u16::from_ne_bytes([b[0], b[1]]));
            }
        }
        Ok(out)
    }

    fn encrypted_nodes(&self) -> Result<std::collections::BTreeSet<Ipv4Addr>, DatapathError> {
        let st = self.lock();
        let mut out = std::collections::BTreeSet::new();
        for key in st.wg_peers.keys() {
            out.insert(Ipv4Addr::from(key.map_err(map_err(MAP_WG_PEERS))?));
        }
        Ok(out)
    }

    fn remove_service(&self, frontend: Frontend) -> Result<(), DatapathError> {
        let mut st = self.lock();
        let ops = st.lb.remove(frontend);
        st.apply_lb(&ops)
    }

    /// Read back from the maps, not from the agent's copy of them.
    fn services(&self) -> Result<Vec<LbService>, DatapathError> {
        let st = self.lock();
        Ok(read_lb_tables(&st.lb_services, &st.lb_backends)?
            .0
            .services())
    }
}

impl State {
    /// Applies `ops` in order. When a write fails, the agent's copy is read again from the maps
    /// so that it stays what the kernel holds, and what the failed update wrote that nothing
    /// points to (backends of a frontend not written, slots beyond a master's count) is
    /// removed: a full map is not filled further by updates it refused.
    fn apply_lb(&mut self, ops: &[LbOp]) -> Result<(), DatapathError> {
        let res = apply_lb_ops(&mut self.lb_services, &mut self.lb_backends, ops);
        if res.is_err()
            && let Ok((lb, garbage)) = read_lb_tables(&self.lb_services, &self.lb_backends)
        {
            if let Err(err) = apply_lb_ops(&mut self.lb_services, &mut self.lb_backends, &garbage) {
                tracing::warn!(error = %err, "removing what a failed load-balancing update left");
            }
            self.lb = lb;
        }
        res
    }
}

/// Applies `ops` in order, one batch per step (see `services.rs`): the writes of one step do
/// not depend on each other, so each step goes to the kernel as one `BPF_MAP_*_BATCH`.
fn apply_lb_ops(
    lb_services: &mut HashMap<MapData, LbServiceKeyBytes, LbServiceValueBytes>,
    lb_backends: &mut HashMap<MapData, u32, LbBackendBytes>,
    ops: &[LbOp],
) -> Result<(), DatapathError> {
    use aya::maps::IterableMap;
    for step in services::steps(ops) {
        match step {
            services::Step::PutBackends(run) => {
                let (keys, values): (Vec<u32>, Vec<LbBackendBytes>) = run
                    .iter()
                    .filter_map(|op| match op {
                        LbOp::PutBackend { id, backend } => {
                            Some((*id, abi::encode_backend(backend)))
                        }
                        _ => None,
                    })
                    .unzip();
                batch::update(lb_backends.map(), &keys, &values)
                    .map_err(map_err(MAP_LB_BACKENDS))?;
            }
            services::Step::PutSlots(run) => {
                let (keys, values): (Vec<LbServiceKeyBytes>, Vec<LbServiceValueBytes>) = run
                    .iter()
                    .filter_map(|op| match op {
                        LbOp::PutSlot {
                            frontend,
                            slot,
                            value,
                        } => Some((
                            abi::encode_service_key(*frontend, *slot),
                            abi::encode_service_value(value),
                        )),
                        _ => None,
                    })
                    .unzip();
                batch::update(lb_services.map(), &keys, &values)
                    .map_err(map_err(MAP_LB_SERVICES))?;
            }
            services::Step::DeleteSlots(run) => {
                let keys: Vec<LbServiceKeyBytes> = run
                    .iter()
                    .filter_map(|op| match op {
                        LbOp::DeleteSlot { frontend, slot } => {
                            Some(abi::encode_service_key(*frontend, *slot))
                        }
                        _ => None,
                    })
                    .collect();
                batch::delete(lb_services.map(), &keys).map_err(map_err(MAP_LB_SERVICES))?;
            }
            services::Step::DeleteBackends(run) => {
                let keys: Vec<u32> = run
                    .iter()
                    .filter_map(|op| match op {
                        LbOp::DeleteBackend { id } => Some(*id),
                        _ => None,
                    })
                    .collect();
                batch::delete(lb_backends.map(), &keys).map_err(map_err(MAP_LB_BACKENDS))?;
            }
        }
    }
    Ok(())
}

/// The load-balancing tables as the maps hold them, and the leftovers of an interrupted update.
fn read_lb_tables(
    lb_services: &HashMap<MapData, LbServiceKeyBytes, LbServiceValueBytes>,
    lb_backends: &HashMap<MapData, u32, LbBackendBytes>,
) -> Result<(LbTables, Vec<LbOp>), DatapathError> {
    let mut entries = Vec::new();
    for item in lb_services.iter() {
        let (key, value) = item.map_err(map_err(MAP_LB_SERVICES))?;
        if let Some((fe, slot)) = abi::decode_service_key(&key) {
            entries.push((fe, slot, abi::decode_service_value(&value)));
        }
    }
    let mut backends = Vec::new();
    for item in lb_backends.iter() {
        let (id, value) = item.map_err(map_err(MAP_LB_BACKENDS))?;
        if let Some(be) = abi::decode_backend(&value) {
            backends.push((id, be));
        }
    }
    Ok(LbTables::from_maps(entries, backends))
}

/// How many keys `keys` walks.
fn count<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<u64, DatapathError> {
    let mut n = 0;
    for key in keys {
        key.map_err(map_err(map))?;
        n += 1;
    }
    Ok(n)
}

/// The classifier program `program` of the loaded object.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(program)
        .ok_or_else(|| DatapathError::Invalid {
            what: format!("program {program}"),
            reason: "missing from the BPF object".into(),
        })?
        .try_into()
        .map_err(|e| DatapathError::Program {
            program,
            source: Box::new(e),
        })
}

/// The bytes of a `struct dns_redirect` for `port` (its fields in the machine's order).
fn abi_port(port: u16) -> [u8; 4] {
    let p = port.to_ne_bytes();
    [p[0], p[1], 0, 0]
}
