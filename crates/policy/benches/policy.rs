//! Policy benchmarks. Prints the figures of BENCHMARKS.md.
//!
//! - 10,000 remote identities arriving: selector-cache update, finding the affected endpoints
//!   and recomputing their policies, beside a naive baseline (every selector matched against
//!   every identity) in the same run;
//! - resolution of one endpoint selected by 1 and by 1,000 rules.
//!
//! Run: `cargo bench -p plexus-policy --bench policy` (sizes: PLEXUS_BENCH_IDENTITIES,
//! PLEXUS_BENCH_RULES).

use std::time::{Duration, Instant};

use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    EndpointInfo, IdentityChange, PolicyConfig, PolicyRepository, Selector, parse_documents,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn labels(text: &str) -> Labels {
    Labels::parse(text).expect("labels")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// `n` CNPs in `default`, each selecting `app=server` and allowing one client app (`client-i`,
/// in cluster2) on one port.
fn rules_yaml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p{i}\nspec:\n  endpointSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: client-{}\n        io.cilium.k8s.policy.cluster: cluster2\n    toPorts:\n    - ports:\n      - port: \"{}\"\n        protocol: TCP\n---\n",
            i,
            1000 + i % 1000
        ));
    }
    out
}

fn remote_identities(n: usize) -> Vec<IdentityChange> {
    (0..n)
        .map(|i| {
            IdentityChange::Upsert(
                NumericIdentity(2 << 16 | (i as u32 + 256)),
                labels(&format!(
                    "k8s:app=client-{};k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=default;k8s:pod=p{i};",
                    i % 1000
                )),
            )
        })
        .collect()
}

fn server(i: usize) -> EndpointInfo {
    EndpointInfo {
        labels: labels(&format!(
            "k8s:app=server;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;k8s:pod=s{i};"
        )),
        named_ports: Default::default(),
    }
}

fn arrival(n_identities: usize, n_rules: usize, endpoints: usize) {
    let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
    repo.upsert_all(parse_documents(&rules_yaml(n_rules), "default").expect("parse"));
    let eps: Vec<EndpointInfo> = (0..endpoints).map(server).collect();
    let changes = remote_identities(n_identities);

    let batch = changes.clone();
    let t = Instant::now();
    let changed = repo.update_identities(batch);
    let cache_time = t.elapsed();
    let t = Instant::now();
    let affected: Vec<&EndpointInfo> = eps
        .iter()
        .filter(|e| repo.affects(&e.labels, &changed))
        .collect();
    let affect_time = t.elapsed();
    let t = Instant::now();
    let mut entries = 0;
    for e in &affected {
        entries += repo.resolve(e).entries.len();
    }
    let resolve_time = t.elapsed();

    // Baseline: a full recompute, every selector matched against every identity.
    let selectors: Vec<Selector> = (0..repo.cache().selector_count() as u32)
        .filter_map(|i| repo.cache().selector(plexus_policy::SelectorId(i)).cloned())
        .collect();
    let all: Vec<&Labels> = changes
        .iter()
        .filter_map(|c| match c {
            IdentityChange::Upsert(_, l) => Some(l),
            IdentityChange::Remove(_) => None,
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for s in &selectors {
        hits += all.iter().filter(|l| s.matches(l)).count();
    }
    let naive = t.elapsed();

    println!(
        "{n_identities} remote identities arrive ({n_rules} rules, {} selectors, {endpoints} endpoints)",
        selectors.len()
    );
    println!(
        "  selector cache update                 {:>12}",
        ms(cache_time)
    );
    println!(
        "  find affected endpoints ({:>4})       {:>12}",
        affected.len(),
        ms(affect_time)
    );
    println!(
        "  recompute their policies             {:>12}   ({entries} entries)",
        ms(resolve_time)
    );
    println!(
        "  total                                 {:>12}",
        ms(cache_time + affect_time + resolve_time)
    );
    println!(
        "  baseline: full recompute of the cache {:>12}   ({hits} matches)",
        ms(naive)
    );
}

fn resolution(n_rules: usize, identities: usize) {
    let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
    repo.upsert_all(parse_documents(&rules_yaml(n_rules), "default").expect("parse"));
    repo.update_identities(remote_identities(identities));
    let ep = server(0);
    let iterations = (20_000 / n_rules).clamp(20, 2_000);
    let t = Instant::now();
    let mut entries = 0;
    for _ in 0..iterations {
        entries = repo.resolve(&ep).entries.len();
    }
    let per = t.elapsed() / iterations as u32;
    println!(
        "  {n_rules:>5} rules select the endpoint          {:>12} per resolution   ({entries} entries)",
        us(per)
    );
}

fn main() {
    let n = env_usize("PLEXUS_BENCH_IDENTITIES", 10_000);
    let rules = env_usize("PLEXUS_BENCH_RULES", 1_000);
    println!("policy benchmarks\n");
    arrival(n, rules, 20);
    println!(
        "\nresolution of one endpoint ({} remote identities known)",
        1_000
    );
    resolution(1, 1_000);
    resolution(rules, 1_000);
}
