//! The Prometheus exposition shared by the Plexus daemons.
//!
//! Every daemon keeps its metrics in a [`prometheus_client`] [`Registry`]: metrics it updates
//! as things happen (counters, gauges, families of them) and collectors that read a figure
//! at scrape time (the kvstore's operation counters, the remote clusters' status, the eBPF
//! datapath's counters). This crate holds what they all need around it:
//!
//! - [`Format`]: the exposition format a scraper asked for (`Accept`), OpenMetrics text for
//!   Prometheus (which asks for it), the Prometheus text format 0.0.4 for everyone else
//!   (`curl`), and [`encode`] of a registry in it. The sample lines read the same in both:
//!   a counter registered as `x` is exposed as `x_total`, as OpenMetrics requires.
//! - [`counters`] and [`gauges`]: one metric family of a collector from plain
//!   `(labels, value)` samples, so a collector reads as the list of its families.
//!
//! The crate re-exports `prometheus_client`, so every crate of the workspace encodes with the
//! same version.

use std::fmt;

pub use prometheus_client;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The labels of one sample, `(name, value)` in the order they are printed.
pub type Labels<'a> = Vec<(&'a str, &'a str)>;

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0: what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: for anyone who does not ask for OpenMetrics.
    Text,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when the client lists it (as
    /// Prometheus does), else the classic text format, which every scraper reads.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// `registry` encoded in `format` (OpenMetrics ends with its `# EOF` line).
pub fn encode(registry: &Registry, format: Format) -> Result<String, fmt::Error> {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
    }
    Ok(out)
}

/// Writes one counter family, `name` without its `_total` (the encoder appends it to every
/// sample, and to the family name in the 0.0.4 format), from a collector's samples.
pub fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    debug_assert!(
        !name.ends_with("_total"),
        "counter {name}: the encoder appends _total"
    );
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// Writes one gauge family from a collector's samples.
pub fn gauges<'a, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            counters(
                &mut encoder,
                "plexus_things",
                "Things seen.",
                [
                    (vec![("kind", "a")], 3),
                    (vec![("kind", "b \"quoted\"")], 0),
                ],
            )?;
            gauges(
                &mut encoder,
                "plexus_level",
                "A level.",
                [(vec![], 2u64), (vec![("remote", "c2")], 1)],
            )
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Two));
        registry
    }

    #[test]
    fn prometheus_gets_openmetrics_everyone_else_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert!(
            Format::Text
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(
            Format::OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text")
        );
    }

    #[test]
    fn both_formats_expose_the_same_samples() {
        let om = encode(&registry(), Format::OpenMetrics).unwrap();
        let text = encode(&registry(), Format::Text).unwrap();
        for sample in [
            "plexus_things_total{kind=\"a\"} 3",
            "plexus_things_total{kind=\"b \\\"quoted\\\"\"} 0",
            "plexus_level 2",
            "plexus_level{remote=\"c2\"} 1",
        ] {
            assert!(om.lines().any(|l| l == sample), "{sample} in\n{om}");
            assert!(text.lines().any(|l| l == sample), "{sample} in\n{text}");
        }
        assert!(om.contains("# TYPE plexus_things counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            text.contains("# TYPE plexus_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE plexus_level gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
