//! The agent's Prometheus metrics: one `prometheus-client` registry served on `/metrics` (the
//! API socket, the mutual-TLS API, and `--prometheus-listen` for Prometheus).
//!
//! [`Metrics`] holds the registry. What it exposes:
//! - the remote clusters' status (`plexus_clustermesh_*`, [`plexus_clustermesh::metrics`]) and
//!   the local kvstore's operations (`plexus_kvstore_*{scope="local"}`), read at scrape time;
//! - the eBPF datapath's counters (the `PLEXUS_METRICS` map, summed over CPUs, read at scrape
//!   time) in Cilium's shape: `plexus_drop_count_total{reason,direction}`,
//!   `plexus_drop_bytes_total{reason,direction}`, `plexus_forward_count_total{direction}`,
//!   `plexus_forward_bytes_total{direction}`, with Cilium's label values (`reason="Policy
//!   denied"`, `direction="INGRESS"|"EGRESS"`);
//! - the datapath's sized maps ([`plexus_datapath::capacity`]), read at scrape time:
//!   `plexus_bpf_map_entries{map}` and `plexus_bpf_map_capacity{map}` (gauges; counting
//!   walks each map's keys), and `plexus_bpf_map_full_total{map}`, the writes a full map
//!   refused since the agent started ([`MapHealth`]);
//! - the flow metrics of [`FlowMetrics`], counted by the flow pipeline as flows pass (Hubble's
//!   `hubble_flows_processed_total` / `hubble_drop_total` with the `plexus_` prefix);
//! - with the node's DNS proxy (eBPF datapath), its counters and what it learned, read at
//!   scrape time, in the spirit of Cilium's `proxy`/`fqdn` metrics:
//!   `plexus_dns_proxy_queries_total{outcome}`, `plexus_dns_proxy_responses_total{outcome}`,
//!   `plexus_dns_proxy_forward_errors_total{reason}`, `plexus_dns_proxy_received_total`,
//!   `plexus_dns_proxy_send_errors_total`, `plexus_dns_proxy_tcp_connections_total`, and the
//!   gauges `plexus_fqdn_learned_addresses`, `plexus_fqdn_learned_names`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use plexus_clustermesh::mesh::MeshStatus;
use plexus_datapath::{Datapath, Direction, MapUsage, Metric};
use plexus_dnsproxy::server::ServerStats;
use plexus_kvstore::KvMetrics;
use plexus_metrics::Format;
use plexus_metrics::prometheus_client::collector::Collector;
use plexus_metrics::prometheus_client::encoding::DescriptorEncoder;
use plexus_metrics::prometheus_client::metrics::counter::Counter;
use plexus_metrics::prometheus_client::metrics::family::Family;
use plexus_metrics::prometheus_client::registry::Registry;

use crate::shell::dns::DnsShell;
use crate::shell::maps::MapHealth;

/// The agent's registry and the handles that feed it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    flows: FlowMetrics,
}

impl Metrics {
    /// The registry of the agent of cluster `cluster`: the remote clusters' status read
    /// through `mesh` at each scrape, the kvstore operations of `kv`, the counters and maps of
    /// `datapath` with the refusals of its full maps in `maps`, the counters of the DNS proxy
    /// `dns` (when the node has one), and empty flow metrics.
    pub fn new(
        cluster: &str,
        mesh: impl Fn() -> MeshStatus + Send + Sync + 'static,
        kv: &KvMetrics,
        datapath: Arc<dyn Datapath>,
        maps: Arc<MapHealth>,
        dns: Option<Arc<DnsShell>>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(plexus_clustermesh::metrics::collector(
            cluster, mesh,
        )));
        registry.register_collector(Box::new(kv.collector("local")));
        registry.register_collector(Box::new(MapCollector {
            datapath: datapath.clone(),
            health: maps,
        }));
        registry.register_collector(Box::new(DatapathCollector(datapath)));
        if let Some(dns) = dns {
            registry.register_collector(Box::new(DnsCollector(dns)));
        }
        let flows = FlowMetrics::default();
        flows.register(&mut registry);
        Self { registry, flows }
    }

    /// The flow metrics, for the flow pipeline to count into.
    pub fn flows(&self) -> &FlowMetrics {
        &self.flows
    }

    /// Everything, encoded in `format`.
    pub fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        plexus_metrics::encode(&self.registry, format)
    }
}

/// The flow metrics: what the flow pipeline counts as flows pass, with plain strings so it
/// needs nothing of this crate's types. Cheap to clone (clones count into the same families).
///
/// - `plexus_flows_processed_total{type,verdict}`: every flow; `type` is the flow's event type
///   as Hubble names it (`Trace`, `Drop`, `PolicyVerdict`, `Translation`), `verdict` its
///   verdict (`FORWARDED`, `DROPPED`, `TRANSLATED`).
/// - `plexus_drop_total{reason,direction,source_cluster,destination_cluster}`: every dropped
///   flow; `reason` as Hubble names it (`POLICY_DENIED`), `direction` the traffic direction
///   (`INGRESS`, `EGRESS`), the clusters of both ends (empty when unknown).
///
/// Counting is on the flow pipeline's path (once per datapath event), so the counters already
/// looked up are kept in a small cache by their label values: a flow costs a short search
/// and an atomic increment, not a label set allocated and hashed into the family.
#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    processed: Family<[(&'static str, String); 2], Counter>,
    drops: Family<[(&'static str, String); 4], Counter>,
    handles: Arc<Mutex<Handles>>,
}

/// The counters of [`FlowMetrics`] already looked up, by their label values (shared by clones).
#[derive(Debug, Default)]
struct Handles {
    processed: Vec<([String; 2], Counter)>,
    drops: Vec<([String; 4], Counter)>,
}

/// At most this many label sets per family are cached (more only when clusters or reasons
/// are many; those are looked up in the family each time).
const MAX_HANDLES: usize = 64;

/// The cached counter for `values`, or the family's (cached when there is room).
fn handle<const N: usize>(
    cache: &mut Vec<([String; N], Counter)>,
    values: [&str; N],
    create: impl FnOnce() -> Counter,
) -> Counter {
    if let Some((_, c)) = cache
        .iter()
        .find(|(k, _)| k.iter().zip(values).all(|(a, b)| a == b))
    {
        return c.clone();
    }
    let counter = create();
    if cache.len() < MAX_HANDLES {
        cache.push((values.map(str::to_string), counter.clone()));
    }
    counter
}

impl FlowMetrics {
    /// Registers both families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "plexus_flows_processed",
            "Flows processed, by event type and verdict",
            self.processed.clone(),
        );
        registry.register(
            "plexus_drop",
            "Dropped flows, by reason, direction, source and destination cluster",
            self.drops.clone(),
        );
    }

    /// Counts one flow of event type `flow_type` with `verdict`.
    pub fn flow_processed(&self, flow_type: &str, verdict: &str) {
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handle(&mut handles.processed, [flow_type, verdict], || {
            self.processed
                .get_or_create(&[("type", flow_type.into()), ("verdict", verdict.into())])
                .clone()
        })
        .inc();
    }

    /// Counts one dropped flow.
    pub fn flow_dropped(
        &self,
        reason: &str,
        direction: &str,
        source_cluster: &str,
        destination_cluster: &str,
    ) {
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handle(
            &mut handles.drops,
            [reason, direction, source_cluster, destination_cluster],
            || {
                self.drops
                    .get_or_create(&[
                        ("reason", reason.into()),
                        ("direction", direction.into()),
                        ("source_cluster", source_cluster.into()),
                        ("destination_cluster", destination_cluster.into()),
                    ])
                    .clone()
            },
        )
        .inc();
    }
}

/// Reads the datapath's counters at each scrape.
struct DatapathCollector(Arc<dyn Datapath>);

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatapathCollector")
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match self.0.metrics() {
            Ok(metrics) => encode_datapath(&metrics, &mut encoder),
            // A scrape still serves everything else; the families are missing, not zero.
            Err(err) => {
                tracing::warn!(error = %err, "read the datapath's metrics map");
                Ok(())
            }
        }
    }
}

/// Reads the sized maps' fill and the full maps' refusals at each scrape.
struct MapCollector {
    datapath: Arc<dyn Datapath>,
    health: Arc<MapHealth>,
}

impl fmt::Debug for MapCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MapCollector")
    }
}

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let usage = self.datapath.map_usage().unwrap_or_else(|err| {
            // The refusals are still served; the fill is missing, not zero.
            tracing::warn!(error = %err, "read the datapath's map fill");
            Vec::new()
        });
        encode_maps(&usage, &self.health.refused_total(), &mut encoder)
    }
}

/// The map families: fill from `usage`, and refusals for every map in `usage` (0 when none)
/// or in `refused`.
fn encode_maps(
    usage: &[MapUsage],
    refused: &std::collections::BTreeMap<&'static str, u64>,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    let mut full: std::collections::BTreeMap<&str, u64> =
        usage.iter().map(|u| (u.map, 0)).collect();
    full.extend(refused.iter().map(|(m, n)| (*m, *n)));
    plexus_metrics::counters(
        encoder,
        "plexus_bpf_map_full",
        "Writes the datapath refused because the map was full, by map.",
        full.iter().map(|(map, n)| (vec![("map", *map)], *n)),
    )?;
    plexus_metrics::gauges(
        encoder,
        "plexus_bpf_map_entries",
        "Entries a datapath map holds, by map.",
        usage.iter().map(|u| {
            (
                vec![("map", u.map)],
                i64::try_from(u.entries).unwrap_or(i64::MAX),
            )
        }),
    )?;
    plexus_metrics::gauges(
        encoder,
        "plexus_bpf_map_capacity",
        "Entries a datapath map can hold (its max_entries), by map.",
        usage.iter().map(|u| {
            (
                vec![("map", u.map)],
                i64::try_from(u.capacity).unwrap_or(i64::MAX),
            )
        }),
    )
}

/// Cilium's label value of a direction.
fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "INGRESS",
        Direction::Egress => "EGRESS",
    }
}

/// The four datapath families of `metrics` (one entry per reason and direction, as read from
/// the map).
fn encode_datapath(metrics: &[Metric], encoder: &mut DescriptorEncoder) -> fmt::Result {
    let reasons: Vec<String> = metrics
        .iter()
        .map(|m| m.drop_reason.map(|r| r.name()).unwrap_or_default())
        .collect();
    let drops = || {
        metrics
            .iter()
            .zip(&reasons)
            .filter(|(m, _)| m.drop_reason.is_some())
    };
    let forwards = || metrics.iter().filter(|m| m.drop_reason.is_none());
    plexus_metrics::counters(
        encoder,
        "plexus_drop_count",
        "Packets dropped by the datapath, by reason and direction.",
        drops().map(|(m, reason)| {
            (
                vec![
                    ("reason", reason.as_str()),
                    ("direction", direction(m.direction)),
                ],
                m.packets,
            )
        }),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_drop_bytes",
        "Bytes dropped by the datapath, by reason and direction.",
        drops().map(|(m, reason)| {
            (
                vec![
                    ("reason", reason.as_str()),
                    ("direction", direction(m.direction)),
                ],
                m.bytes,
            )
        }),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_forward_count",
        "Packets forwarded by the datapath, by direction.",
        forwards().map(|m| (vec![("direction", direction(m.direction))], m.packets)),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_forward_bytes",
        "Bytes forwarded by the datapath, by direction.",
        forwards().map(|m| (vec![("direction", direction(m.direction))], m.bytes)),
    )
}

/// Reads the DNS proxy's counters and learned state at each scrape.
struct DnsCollector(Arc<DnsShell>);

impl fmt::Debug for DnsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DnsCollector")
    }
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let learned = self.0.learned_counts();
        encode_dns(&self.0.stats(), learned, &mut encoder)
    }
}

/// The DNS proxy's families: its counters `stats` and the learned (names, addresses).
fn encode_dns(
    stats: &ServerStats,
    (names, addresses): (usize, usize),
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_received",
        "DNS queries received by the DNS proxy (UDP datagrams and TCP messages).",
        [(vec![], stats.queries)],
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_queries",
        "DNS queries handled by the DNS proxy, by outcome: forwarded to their server, \
         refused by the endpoint's DNS rules, malformed, from no local endpoint, dropped as \
         overloaded.",
        [
            ("forwarded", stats.forwarded),
            ("refused", stats.refused),
            ("malformed", stats.malformed),
            ("no_endpoint", stats.no_endpoint),
            ("overloaded", stats.overloaded),
        ]
        .map(|(outcome, n)| (vec![("outcome", outcome)], n)),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_responses",
        "DNS responses handled by the DNS proxy, by outcome: delivered at once, held until \
         what they taught was applied, released when the longest hold expired, dropped.",
        [
            ("delivered", stats.delivered),
            ("held", stats.held),
            ("hold_expired", stats.hold_expired),
            ("dropped", stats.responses_dropped),
        ]
        .map(|(outcome, n)| (vec![("outcome", outcome)], n)),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_forward_errors",
        "DNS queries the DNS proxy failed to forward, by reason: a socket error, or no answer \
         in time.",
        [
            ("error", stats.forward_errors),
            ("timeout", stats.forward_timeouts),
        ]
        .map(|(reason, n)| (vec![("reason", reason)], n)),
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_send_errors",
        "DNS answers the DNS proxy could not send to their client.",
        [(vec![], stats.send_errors)],
    )?;
    plexus_metrics::counters(
        encoder,
        "plexus_dns_proxy_tcp_connections",
        "TCP connections accepted by the DNS proxy.",
        [(vec![], stats.tcp_connections)],
    )?;
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    plexus_metrics::gauges(
        encoder,
        "plexus_fqdn_learned_addresses",
        "Distinct addresses the DNS proxy learned for toFQDNs selectors (those past their TTL \
         included while connections use them).",
        [(vec![], gauge(addresses))],
    )?;
    plexus_metrics::gauges(
        encoder,
        "plexus_fqdn_learned_names",
        "(name, address) pairs the DNS proxy learned for toFQDNs selectors.",
        [(vec![], gauge(names))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_datapath::DropReason;

    #[derive(Debug)]
    struct Fixed(Vec<Metric>);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_datapath(&self.0, &mut encoder)
        }
    }

    fn lines(registry: &Registry, format: Format) -> Vec<String> {
        plexus_metrics::encode(registry, format)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn datapath_counters_read_as_ciliums() {
        let metric = |direction, drop_reason, packets, bytes| Metric {
            direction,
            drop_reason,
            packets,
            bytes,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(vec![
            metric(Direction::Ingress, None, 10, 1000),
            metric(Direction::Egress, None, 7, 700),
            metric(Direction::Ingress, Some(DropReason::PolicyDenied), 3, 222),
            metric(Direction::Egress, Some(DropReason::Other(99)), 1, 60),
        ])));
        for format in [Format::OpenMetrics, Format::Text] {
            let text = lines(&registry, format);
            for line in [
                "plexus_forward_count_total{direction=\"INGRESS\"} 10",
                "plexus_forward_count_total{direction=\"EGRESS\"} 7",
                "plexus_forward_bytes_total{direction=\"EGRESS\"} 700",
                "plexus_drop_count_total{reason=\"Policy denied\",direction=\"INGRESS\"} 3",
                "plexus_drop_bytes_total{reason=\"Policy denied\",direction=\"INGRESS\"} 222",
                "plexus_drop_count_total{reason=\"Unknown reason 99\",direction=\"EGRESS\"} 1",
            ] {
                assert!(text.iter().any(|l| l == line), "{line} in {text:#?}");
            }
            // Forwarded packets are no drops.
            assert_eq!(
                text.iter()
                    .filter(|l| l.starts_with("plexus_drop_count_total"))
                    .count(),
                2,
                "{text:#?}"
            );
        }
    }

    #[derive(Debug)]
    struct FixedDns(ServerStats, (usize, usize));

    impl Collector for FixedDns {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_dns(&self.0, self.1, &mut encoder)
        }
    }

    #[test]
    fn dns_proxy_counters_by_outcome() {
        let stats = ServerStats {
            queries: 12,
            forwarded: 7,
            refused: 3,
            malformed: 1,
            no_endpoint: 1,
            overloaded: 0,
            delivered: 4,
            held: 2,
            hold_expired: 1,
            responses_dropped: 5,
            forward_errors: 6,
            forward_timeouts: 8,
            send_errors: 9,
            tcp_connections: 10,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(FixedDns(stats, (3, 2))));
        for format in [Format::OpenMetrics, Format::Text] {
            let text = lines(&registry, format);
            for line in [
                "plexus_dns_proxy_received_total 12",
                "plexus_dns_proxy_queries_total{outcome=\"forwarded\"} 7",
                "plexus_dns_proxy_queries_total{outcome=\"refused\"} 3",
                "plexus_dns_proxy_queries_total{outcome=\"malformed\"} 1",
                "plexus_dns_proxy_queries_total{outcome=\"no_endpoint\"} 1",
                "plexus_dns_proxy_queries_total{outcome=\"overloaded\"} 0",
                "plexus_dns_proxy_responses_total{outcome=\"delivered\"} 4",
                "plexus_dns_proxy_responses_total{outcome=\"held\"} 2",
                "plexus_dns_proxy_responses_total{outcome=\"hold_expired\"} 1",
                "plexus_dns_proxy_responses_total{outcome=\"dropped\"} 5",
                "plexus_dns_proxy_forward_errors_total{reason=\"error\"} 6",
                "plexus_dns_proxy_forward_errors_total{reason=\"timeout\"} 8",
                "plexus_dns_proxy_send_errors_total 9",
                "plexus_dns_proxy_tcp_connections_total 10",
                "plexus_fqdn_learned_addresses 2",
                "plexus_fqdn_learned_names 3",
            ] {
                assert!(text.iter().any(|l| l == line), "{line} in {text:#?}");
            }
        }
        let text = lines(&registry, Format::Text);
        for line in [
            "# TYPE plexus_dns_proxy_queries_total counter",
            "# TYPE plexus_fqdn_learned_addresses gauge",
        ] {
            assert!(text.iter().any(|l| l == line), "{line} in {text:#?}");
        }
    }

    #[derive(Debug)]
    struct Maps(Vec<MapUsage>, std::collections::BTreeMap<&'static str, u64>);

    impl Collector for Maps {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            encode_maps(&self.0, &self.1, &mut encoder)
        }
    }

    #[test]
    fn map_fill_and_refusals_read_per_map() {
        let usage = |map, entries, capacity| MapUsage {
            map,
            entries,
            capacity,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Maps(
            vec![
                usage("PLEXUS_IPCACHE", 8, 8),
                usage("PLEXUS_CT", 10, 262_144),
            ],
            [("PLEXUS_IPCACHE", 2)].into(),
        )));
        for format in [Format::OpenMetrics, Format::Text] {
            let text = lines(&registry, format);
            for line in [
                "plexus_bpf_map_full_total{map=\"PLEXUS_IPCACHE\"} 2",
                "plexus_bpf_map_full_total{map=\"PLEXUS_CT\"} 0",
                "plexus_bpf_map_entries{map=\"PLEXUS_IPCACHE\"} 8",
                "plexus_bpf_map_capacity{map=\"PLEXUS_IPCACHE\"} 8",
                "plexus_bpf_map_entries{map=\"PLEXUS_CT\"} 10",
                "plexus_bpf_map_capacity{map=\"PLEXUS_CT\"} 262144",
            ] {
                assert!(text.iter().any(|l| l == line), "{line} in {text:#?}");
            }
        }
    }

    #[test]
    fn flow_metrics_count_by_their_labels() {
        let flows = FlowMetrics::default();
        let mut registry = Registry::default();
        flows.register(&mut registry);
        // Registered but never counted: no samples (a family appears with its first flow).
        let empty = lines(&registry, Format::OpenMetrics);
        assert_eq!(empty, ["# EOF"]);

        let pipeline = flows.clone();
        pipeline.flow_processed("Trace", "FORWARDED");
        pipeline.flow_processed("Trace", "FORWARDED");
        pipeline.flow_processed("Drop", "DROPPED");
        pipeline.flow_dropped("POLICY_DENIED", "INGRESS", "cluster2", "cluster1");
        pipeline.flow_dropped("POLICY_DENIED", "INGRESS", "cluster2", "cluster1");
        pipeline.flow_dropped("POLICY_DENIED", "EGRESS", "cluster1", "");
        for format in [Format::OpenMetrics, Format::Text] {
            let text = lines(&registry, format);
            for line in [
                "plexus_flows_processed_total{type=\"Trace\",verdict=\"FORWARDED\"} 2",
                "plexus_flows_processed_total{type=\"Drop\",verdict=\"DROPPED\"} 1",
                "plexus_drop_total{reason=\"POLICY_DENIED\",direction=\"INGRESS\",source_cluster=\"cluster2\",destination_cluster=\"cluster1\"} 2",
                "plexus_drop_total{reason=\"POLICY_DENIED\",direction=\"EGRESS\",source_cluster=\"cluster1\",destination_cluster=\"\"} 1",
            ] {
                assert!(text.iter().any(|l| l == line), "{line} in {text:#?}");
            }
        }
        let text = lines(&registry, Format::Text);
        assert!(
            text.iter()
                .any(|l| l == "# HELP plexus_drop_total Dropped flows, by reason, direction, source and destination cluster."),
            "{text:#?}"
        );
    }
}
