//! The checks the walkthrough tests share (`examples/*/README.md`), whatever runs the lab's
//! pods: which clusters answer a service, and whether a pod reaches another on a port.
//!
//! The answers are the lab's built-in server's JSON (`{"pod":..,"cluster":..}`), so a check
//! counts clusters by the `cluster` field; anything else is a failed request.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::lab::Lab;

/// `n` times `curl -s --max-time 2 TARGET` from `pod` (namespace `default` of `ctx`): how
/// many answers each cluster gave, and how many requests failed (under the key "failed").
pub fn ask(lab: &Lab, ctx: &str, pod: &str, target: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "for i in $(seq {n}); do curl -s --max-time 2 {target} || printf failed; echo; done"
    );
    let mut counts = BTreeMap::new();
    for line in lab
        .sh(ctx, "default", pod, &script)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let key = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["cluster"].as_str().map(str::to_string))
            .unwrap_or_else(|| "failed".to_string());
        *counts.entry(key).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    assert_eq!(total, n, "{n} requests from {pod} in {ctx}: {counts:?}");
    counts
}

/// How many answers `cluster` gave.
pub fn share(counts: &BTreeMap<String, usize>, cluster: &str) -> usize {
    counts.get(cluster).copied().unwrap_or(0)
}

/// Whether both walkthrough clusters (`cluster1`, `cluster2`) answered; else the counts.
pub fn both(counts: &BTreeMap<String, usize>) -> Result<(), String> {
    (share(counts, "cluster1") > 0 && share(counts, "cluster2") > 0)
        .then_some(())
        .ok_or(format!("{counts:?}"))
}

/// Whether `cluster` gave every answer (and nothing failed).
pub fn only(counts: &BTreeMap<String, usize>, cluster: &str) -> bool {
    counts.len() == 1 && counts.contains_key(cluster)
}

/// Whether a TCP connection from `pod` (namespace `ns` of `ctx`) to `target:port` is answered
/// by a server whose answer names `answerer` (the built-in server's pod name).
pub fn reaches(
    lab: &Lab,
    ctx: &str,
    ns: &str,
    pod: &str,
    target: &str,
    port: u16,
    answerer: &str,
) -> bool {
    lab.sh(ctx, ns, pod, &format!("nc -w 2 {target} {port} </dev/null"))
        .contains(answerer)
}
