//! Byte layouts of the map keys and values shared with `bpf/lib/common.h`.
//!
//! Maps are accessed as byte arrays (which aya already knows to be plain data), so this module
//! is the only place that knows offsets. Addresses are in network order (the octets), other
//! integers in the host's byte order, as the C structs hold them.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{
    lb::{Frontend, L4Proto},
    types::{Endpoint, IpcacheValue, NodeConfig},
};

/// `struct endpoint_info`.
pub(crate) type EndpointBytes = [u8; 24];
/// `struct ipcache_value`.
pub(crate) type IpcacheBytes = [u8; 12];
/// `struct node_config`.
pub(crate) type ConfigBytes = [u8; 64];
/// `struct metrics_key`.
pub(crate) type MetricsKeyBytes = [u8; 4];
/// `struct metrics_value`.
pub(crate) type MetricsValueBytes = [u8; 16];
/// `struct lb_service_key`.
pub(crate) type LbServiceKeyBytes = [u8; 12];
/// `struct lb_service_value`.
pub(crate) type LbServiceValueBytes = [u8; 12];
/// `struct lb_backend`.
pub(crate) type LbBackendBytes = [u8; 12];
/// `struct ct_key`.
pub(crate) type CtKeyBytes = [u8; 16];
/// `struct ct_entry`.
pub(crate) type CtEntryBytes = [u8; 32];

/// `lb_backend.flags`: takes new connections.
const LB_BACKEND_ACTIVE: u8 = 0;
/// `lb_backend.flags`: keeps its connections, takes no new one.
const LB_BACKEND_INACTIVE: u8 = 1;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

pub(crate) fn encode_endpoint(ep: &Endpoint, ifindex: u32) -> EndpointBytes {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    b[4..6].copy_from_slice(&ep.id.to_ne_bytes());
    b[8..14].copy_from_slice(&ep.pod_mac);
    b[14..20].copy_from_slice(&ep.host_mac);
    b[20..24].copy_from_slice(&ep.identity.to_ne_bytes());
    b
}

/// Decodes an endpoint; the interface name is left empty for the caller to resolve.
pub(crate) fn decode_endpoint(ipv4: Ipv4Addr, b: &EndpointBytes) -> Endpoint {
    let mut pod_mac = [0u8; 6];
    let mut host_mac = [0u8; 6];
    pod_mac.copy_from_slice(&b[8..14]);
    host_mac.copy_from_slice(&b[14..20]);
    Endpoint {
        id: u16_at(b, 4),
        ipv4,
        host_ifname: String::new(),
        host_ifindex: u32_at(b, 0),
        pod_mac,
        host_mac,
        identity: u32_at(b, 20),
    }
}

pub(crate) fn encode_ipcache(v: &IpcacheValue) -> IpcacheBytes {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&v.identity.to_ne_bytes());
    b[4..8].copy_from_slice(&v.tunnel_endpoint.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    b[8..10].copy_from_slice(&v.cluster_id.to_ne_bytes());
    b
}

pub(crate) fn decode_ipcache(b: &IpcacheBytes) -> IpcacheValue {
    let tunnel = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    IpcacheValue {
        identity: u32_at(b, 0),
        tunnel_endpoint: (!tunnel.is_unspecified()).then_some(tunnel),
        cluster_id: u16_at(b, 8),
    }
}

pub(crate) fn encode_config(cfg: &NodeConfig, tunnel_ifindex: u32) -> ConfigBytes {
    let mut b = [0u8; 64];
    b[0..4].copy_from_slice(&tunnel_ifindex.to_ne_bytes());
    b[4..8].copy_from_slice(&cfg.node_ip.octets());
    b[8..12].copy_from_slice(&cfg.routing.as_raw().to_ne_bytes());
    b[12..16].copy_from_slice(&cfg.gateway_ip.octets());
    b[16..20].copy_from_slice(&u32::from(cfg.cluster_id).to_ne_bytes());
    b[20..24].copy_from_slice(&cfg.encryption.as_raw_flags().to_ne_bytes());
    b
}

/// `(reason, direction)` of a metrics key.
pub(crate) fn decode_metrics_key(b: &MetricsKeyBytes) -> (u8, u8) {
    (b[0], b[1])
}

/// `(packets, bytes)` of a metrics value.
pub(crate) fn decode_metrics_value(b: &MetricsValueBytes) -> (u64, u64) {
    let mut p = [0u8; 8];
    let mut n = [0u8; 8];
    p.copy_from_slice(&b[0..8]);
    n.copy_from_slice(&b[8..16]);
    (u64::from_ne_bytes(p), u64::from_ne_bytes(n))
}

/// A `PLEXUS_LB_SERVICES` key: a frontend and a slot (0 = the master entry).
pub(crate) fn encode_service_key(fe: Frontend, slot: u16) -> LbServiceKeyBytes {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&fe.addr.octets());
    b[4..6].copy_from_slice(&fe.port.to_be_bytes());
    b[6] = fe.proto.number();
    b[8..10].copy_from_slice(&slot.to_ne_bytes());
    b
}

/// The frontend and slot of a key; `None` for a protocol this version does not know.
pub(crate) fn decode_service_key(b: &LbServiceKeyBytes) -> Option<(Frontend, u16)> {
    let fe = Frontend {
        addr: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        port: u16::from_be_bytes([b[4], b[5]]),
        proto: L4Proto::from_number(b[6])?,
    };
    Some((fe, u16_at(b, 8)))
}

/// `struct lb_service_value`: the master entry has `backend_id` 0 and the count; a slot has
/// its backend id and count 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LbServiceValue {
    pub backend_id: u32,
    pub service_id: u32,
    pub count: u16,
}

pub(crate) fn encode_service_value(v: &LbServiceValue) -> LbServiceValueBytes {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&v.backend_id.to_ne_bytes());
    b[4..8].copy_from_slice(&v.service_id.to_ne_bytes());
    b[8..10].copy_from_slice(&v.count.to_ne_bytes());
    b
}

pub(crate) fn decode_service_value(b: &LbServiceValueBytes) -> LbServiceValue {
    LbServiceValue {
        backend_id: u32_at(b, 0),
        service_id: u32_at(b, 4),
        count: u16_at(b, 8),
    }
}

/// `struct lb_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LbBackend {
    pub addr: SocketAddrV4,
    pub proto: L4Proto,
    pub inactive: bool,
    pub service_id: u32,
}

pub(crate) fn encode_backend(v: &LbBackend) -> LbBackendBytes {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&v.addr.ip().octets());
    b[4..6].copy_from_slice(&v.addr.port().to_be_bytes());
    b[6] = v.proto.number();
    b[7] = if v.inactive {
        LB_BACKEND_INACTIVE
    } else {
        LB_BACKEND_ACTIVE
    };
    b[8..12].copy_from_slice(&v.service_id.to_ne_bytes());
    b
}

/// A backend; `None` for a protocol this version does not know.
pub(crate) fn decode_backend(b: &LbBackendBytes) -> Option<LbBackend> {
    Some(LbBackend {
        addr: SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_be_bytes([b[4], b[5]]),
        ),
        proto: L4Proto::from_number(b[6])?,
        inactive: b[7] != LB_BACKEND_ACTIVE,
        service_id: u32_at(b, 8),
    })
}

/// `CT_DIR_POLICY_OUT`: endpoint -> peer, allowed on its way out of the endpoint.
const CT_DIR_POLICY_OUT: u8 = 3;
/// `ct_lifetime()` of `bpf/lib/conntrack.h`.
fn ct_lifetime_ns(proto: u8, tcp_flags: u8) -> u64 {
    const SEC: u64 = 1_000_000_000;
    if proto != 6 {
        return 60 * SEC;
    }
    if tcp_flags & (0x01 | 0x04) != 0 {
        60 * SEC
    } else if tcp_flags & 0x10 != 0 {
        6 * 3600 * SEC
    } else {
        60 * SEC
    }
}

/// The peer of a live `CT_DIR_POLICY_OUT` entry at `now_ns` (`bpf_ktime_get_ns()`), if it is
/// one.
pub(crate) fn policy_out_peer(
    key: &CtKeyBytes,
    entry: &CtEntryBytes,
    now_ns: u64,
) -> Option<Ipv4Addr> {
    let (proto, dir) = (key[12], key[13]);
    if dir != CT_DIR_POLICY_OUT {
        return None;
    }
    let last_seen = u64::from_ne_bytes(entry[0..8].try_into().ok()?);
    let tcp_flags = entry[22];
    // A closing connection (FIN or RST sent) needs its peer no more.
    if proto == 6 && tcp_flags & (0x01 | 0x04) != 0 {
        return None;
    }
    if now_ns.saturating_sub(last_seen) > ct_lifetime_ns(proto, tcp_flags) {
        return None;
    }
    // daddr, network order.
    Some(Ipv4Addr::new(key[4], key[5], key[6], key[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_entries_round_trip_with_network_order_addresses_and_ports() {
        let fe = Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            proto: L4Proto::Udp,
        };
        let key = encode_service_key(fe, 3);
        assert_eq!(&key[0..7], &[10, 96, 0, 10, 0, 53, 17]);
        assert_eq!(decode_service_key(&key), Some((fe, 3)));
        let v = LbServiceValue {
            backend_id: 7,
            service_id: 9,
            count: 2,
        };
        assert_eq!(decode_service_value(&encode_service_value(&v)), v);
        let be = LbBackend {
            addr: "10.60.1.7:8080".parse().unwrap(),
            proto: L4Proto::Tcp,
            inactive: true,
            service_id: 9,
        };
        let b = encode_backend(&be);
        assert_eq!(&b[0..8], &[10, 60, 1, 7, 0x1f, 0x90, 6, 1]);
        assert_eq!(decode_backend(&b), Some(be));
    }

    #[test]
    fn endpoint_and_ipcache_round_trip() {
        let ep = Endpoint {
            id: 3833,
            ipv4: Ipv4Addr::new(10, 0, 0, 5),
            host_ifname: String::new(),
            host_ifindex: 17,
            pod_mac: [2, 0, 0, 0, 0, 5],
            host_mac: [2, 0, 0, 0, 1, 5],
            identity: 0x12_3456,
        };
        assert_eq!(decode_endpoint(ep.ipv4, &encode_endpoint(&ep, 17)), ep);
        for tunnel in [None, Some(Ipv4Addr::new(192, 168, 1, 2))] {
            let v = IpcacheValue {
                identity: 7,
                tunnel_endpoint: tunnel,
                cluster_id: 3,
            };
            assert_eq!(decode_ipcache(&encode_ipcache(&v)), v);
        }
        // Network order on the wire: the first byte of the address comes first.
        let v = IpcacheValue {
            identity: 1,
            tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 1, 2)),
            cluster_id: 0,
        };
        assert_eq!(&encode_ipcache(&v)[4..8], &[192, 168, 1, 2]);
    }
}
