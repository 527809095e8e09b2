//! Byte layouts of the map keys and values shared with `bpf/lib/common.h`.
//!
//! Maps are accessed as byte arrays (which aya already knows to be plain data), so this module
//! is the only place that knows offsets. Addresses are in network order (the octets), other
//! integers in the host's byte order, as the C structs hold them.

use std::net::Ipv4Addr;

use crate::types::{Endpoint, IpcacheValue, NodeConfig};

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

#[cfg(test)]
mod tests {
    use super::*;

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
