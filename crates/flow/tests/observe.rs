//! `plexus observe` flags to requests, by Hubble's rules.

#![allow(clippy::unwrap_used)]

mod common;

use common::{denied, forwarded, t, translated};
use plexus_flow::observe::DEFAULT_LAST;
use plexus_flow::{
    EventTypeFilter, FlagError, FlowFilter, FlowRequest, ObserveBuilder, TrafficDirection, Verdict,
};

fn now() -> chrono::DateTime<chrono::Utc> {
    t("2026-12-07T12:00:00Z")
}

fn build(pairs: &[(&str, &str)]) -> Result<FlowRequest, FlagError> {
    ObserveBuilder::from_pairs(now(), pairs.iter().copied())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn plain_observe_asks_for_the_last_20() {
    let r = build(&[]).unwrap();
    assert_eq!(
        r,
        FlowRequest {
            number: Some(DEFAULT_LAST),
            ..Default::default()
        }
    );
    let r = build(&[("--follow", "")]).unwrap();
    assert_eq!(
        r,
        FlowRequest {
            follow: true,
            ..Default::default()
        }
    );
    let r = build(&[("-f", ""), ("--last", "5")]).unwrap();
    assert_eq!(
        r,
        FlowRequest {
            follow: true,
            number: Some(5),
            ..Default::default()
        }
    );
    let r = build(&[("all", "")]).unwrap();
    assert_eq!(r.number, Some(u64::MAX));
    let r = build(&[("since", "5m")]).unwrap();
    assert_eq!(
        r,
        FlowRequest {
            since: Some(t("2026-12-07T11:55:00Z")),
            ..Default::default()
        }
    );
    let r = build(&[("since", "2026-12-07T10:00:00+01:00")]).unwrap();
    assert_eq!(r.since, Some(t("2026-12-07T09:00:00Z")));
}

#[test]
fn pod_means_from_or_to_the_pod() {
    let r = build(&[("--pod", "default/x-wing")]).unwrap();
    assert_eq!(
        r.whitelist,
        vec![
            FlowFilter {
                source_pod: s(&["default/x-wing"]),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: s(&["default/x-wing"]),
                ..Default::default()
            },
        ]
    );
    let m = r.matcher().unwrap();
    assert!(m.matches(&denied()), "x-wing is the source");
    let r = build(&[("--pod", "default/rebel-base-1")]).unwrap();
    assert!(
        r.matcher().unwrap().matches(&denied()),
        "rebel-base-1 is the destination"
    );
    let r = build(&[("--pod", "default/y-wing")]).unwrap();
    assert!(!r.matcher().unwrap().matches(&denied()));
}

#[test]
fn other_flags_apply_to_both_sides_filters() {
    let r = build(&[
        ("pod", "default/x-wing"),
        ("verdict", "DROPPED"),
        ("port", "80"),
    ])
    .unwrap();
    assert_eq!(
        r.whitelist,
        vec![
            FlowFilter {
                source_pod: s(&["default/x-wing"]),
                verdict: vec![Verdict::Dropped],
                source_port: s(&["80"]),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: s(&["default/x-wing"]),
                verdict: vec![Verdict::Dropped],
                destination_port: s(&["80"]),
                ..Default::default()
            },
        ]
    );
    // x-wing's drop has destination port 80, but x-wing is the source: the first filter needs
    // source port 80, the second needs x-wing as destination. Neither matches.
    assert!(!r.matcher().unwrap().matches(&denied()));
    let r = build(&[
        ("pod", "default/rebel-base-1"),
        ("verdict", "dropped"),
        ("port", "80"),
    ])
    .unwrap();
    assert!(r.matcher().unwrap().matches(&denied()));
}

#[test]
fn one_sided_flags_and_equal_filters_collapse() {
    let r = build(&[
        ("from-pod", "default/x-wing"),
        ("to-label", "app=rebel-base"),
        ("from-cluster", "c1"),
        ("to-cluster", "c2"),
        ("to-identity", "6587186"),
        ("to-ip", "10.60.2.0/24"),
        ("type", "drop"),
        ("protocol", "TCP"),
        ("node-name", "c2/"),
        ("traffic-direction", "ingress"),
    ])
    .unwrap();
    assert_eq!(
        r.whitelist,
        vec![FlowFilter {
            source_pod: s(&["default/x-wing"]),
            destination_label: s(&["app=rebel-base"]),
            source_cluster_name: s(&["c1"]),
            destination_cluster_name: s(&["c2"]),
            destination_identity: vec![6587186],
            destination_ip: s(&["10.60.2.0/24"]),
            event_type: vec![EventTypeFilter::of_type(1)],
            protocol: s(&["tcp"]),
            node_name: s(&["c2/"]),
            traffic_direction: vec![TrafficDirection::Ingress],
            ..Default::default()
        }],
        "both filters equal: one is sent"
    );
    assert!(r.matcher().unwrap().matches(&denied()));
}

#[test]
fn cluster_identity_label_ip_are_both_sided() {
    let r = build(&[("cluster", "c2")]).unwrap();
    assert_eq!(r.whitelist.len(), 2);
    assert_eq!(r.whitelist[0].source_cluster_name, s(&["c2"]));
    assert_eq!(r.whitelist[1].destination_cluster_name, s(&["c2"]));
    assert!(
        r.matcher().unwrap().matches(&denied()),
        "c1 -> c2 touches c2"
    );
    let r = build(&[("identity", "world")]).unwrap();
    assert_eq!(r.whitelist[0].source_identity, vec![2]);
    assert_eq!(r.whitelist[1].destination_identity, vec![2]);
    let r = build(&[("label", "k8s:app=x-wing")]).unwrap();
    assert!(r.matcher().unwrap().matches(&denied()));
    let r = build(&[("ip", "10.60.2.9")]).unwrap();
    assert_eq!(r.whitelist[1].destination_ip, s(&["10.60.2.9"]));
    assert!(r.matcher().unwrap().matches(&denied()));
}

#[test]
fn namespace_restricts_each_side_and_prefixes_pods() {
    let r = build(&[("-n", "default")]).unwrap();
    assert_eq!(
        r.whitelist,
        vec![
            FlowFilter {
                source_pod: s(&["default/"]),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: s(&["default/"]),
                ..Default::default()
            },
        ]
    );
    let r = build(&[("pod", "x-wing"), ("namespace", "empire")]).unwrap();
    assert_eq!(r.whitelist[0].source_pod, s(&["empire/x-wing"]));
    assert_eq!(r.whitelist[1].destination_pod, s(&["empire/x-wing"]));
    let r = build(&[
        ("from-namespace", "default"),
        ("to-namespace", "kube-system"),
    ])
    .unwrap();
    assert_eq!(
        r.whitelist,
        vec![FlowFilter {
            source_pod: s(&["default/"]),
            destination_pod: s(&["kube-system/"]),
            ..Default::default()
        }]
    );
}

#[test]
fn not_negates_the_next_filter_flag_only() {
    let r = build(&[
        ("verdict", "DROPPED"),
        ("--not", ""),
        ("pod", "default/x-wing"),
    ])
    .unwrap();
    assert_eq!(
        r.whitelist,
        vec![FlowFilter {
            verdict: vec![Verdict::Dropped],
            ..Default::default()
        }]
    );
    assert_eq!(
        r.blacklist,
        vec![
            FlowFilter {
                source_pod: s(&["default/x-wing"]),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: s(&["default/x-wing"]),
                ..Default::default()
            },
        ]
    );
    let m = r.matcher().unwrap();
    assert!(!m.matches(&denied()), "dropped but involves x-wing");
    // --not applies once: the next flag goes to the whitelist again.
    let r = build(&[("not", ""), ("type", "trace"), ("verdict", "FORWARDED")]).unwrap();
    assert_eq!(
        r.blacklist,
        vec![FlowFilter {
            event_type: vec![EventTypeFilter::of_type(4)],
            ..Default::default()
        }]
    );
    assert_eq!(
        r.whitelist,
        vec![FlowFilter {
            verdict: vec![Verdict::Forwarded],
            ..Default::default()
        }]
    );
    let m = r.matcher().unwrap();
    assert!(!m.matches(&forwarded()) && !m.matches(&translated()));
    // Two negated flags of the same kind: two --not.
    let r = build(&[
        ("not", ""),
        ("type", "trace"),
        ("not", ""),
        ("type", "translation"),
    ])
    .unwrap();
    assert_eq!(
        r.blacklist,
        vec![FlowFilter {
            event_type: vec![EventTypeFilter::of_type(4), EventTypeFilter::of_type(7)],
            ..Default::default()
        }]
    );
    let m = r.matcher().unwrap();
    assert!(m.matches(&denied()) && !m.matches(&forwarded()) && !m.matches(&translated()));
    // The builder's own method.
    let mut b = ObserveBuilder::new(now());
    b.not().unwrap().flag("verdict", "DROPPED").unwrap();
    assert_eq!(
        b.build().unwrap().blacklist[0].verdict,
        vec![Verdict::Dropped]
    );
}

#[test]
fn switches_take_no_value() {
    use plexus_flow::observe::{FLAGS, takes_value};
    let switches: Vec<&str> = FLAGS.iter().copied().filter(|f| !takes_value(f)).collect();
    assert_eq!(switches, vec!["not", "all", "follow"]);
    assert!(!takes_value("-f") && takes_value("--pod") && takes_value("-n"));
}

#[test]
fn type_values() {
    let ty = |v: &str| build(&[("type", v)]).unwrap().whitelist[0].event_type[0];
    assert_eq!(ty("drop"), EventTypeFilter::of_type(1));
    assert_eq!(ty("trace"), EventTypeFilter::of_type(4));
    assert_eq!(ty("policy-verdict"), EventTypeFilter::of_type(5));
    assert_eq!(ty("translation"), EventTypeFilter::of_type(7));
    assert_eq!(ty("trace-sock"), EventTypeFilter::of_type(7));
    assert_eq!(
        ty("trace:to-endpoint"),
        EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 0
        }
    );
    assert_eq!(
        ty("trace:from-overlay"),
        EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 9
        }
    );
    assert_eq!(
        ty("1:133"),
        EventTypeFilter {
            r#type: 1,
            match_sub_type: true,
            sub_type: 133
        }
    );
    // policy-verdict includes policy drops.
    let r = build(&[("type", "policy-verdict")]).unwrap();
    assert!(r.matcher().unwrap().matches(&denied()));
}

#[test]
fn bad_values_name_the_flag() {
    let err = |pairs: &[(&str, &str)]| build(pairs).unwrap_err().to_string();
    assert_eq!(
        err(&[("from-ip", "10.0.0.300")]),
        r#"--from-ip "10.0.0.300": not an IP address or CIDR"#
    );
    assert!(err(&[("ip", "10.0.0.0/40")]).starts_with(r#"--ip "10.0.0.0/40": "#));
    assert_eq!(
        err(&[("verdict", "LOST")]),
        r#"--verdict "LOST": expected FORWARDED, DROPPED, TRANSLATED, AUDIT, REDIRECTED, TRACED or ERROR"#
    );
    assert!(err(&[("type", "l7")]).starts_with(r#"--type "l7": unknown type"#));
    assert!(
        err(&[("type", "trace:sideways")])
            .starts_with(r#"--type "trace:sideways": unknown sub-type"#)
    );
    assert!(
        err(&[("since", "yesterday")])
            .starts_with(r#"--since "yesterday": expected an RFC 3339 time"#)
    );
    assert!(err(&[("last", "many")]).starts_with(r#"--last "many""#));
    assert!(err(&[("to-port", "http")]).starts_with(r#"--to-port "http""#));
    assert!(err(&[("identity", "nobody")]).starts_with(r#"--identity "nobody""#));
    assert!(err(&[("protocol", "http")]).starts_with(r#"--protocol "http""#));
    assert!(err(&[("label", "app in (a")]).starts_with(r#"--label "app in (a""#));
    assert!(err(&[("traffic-direction", "up")]).starts_with(r#"--traffic-direction "up""#));
    assert!(err(&[("pod", "")]).starts_with(r#"--pod "": empty value"#));
    assert_eq!(err(&[("colour", "red")]), "--colour: unknown observe flag");
    assert_eq!(
        err(&[("not", "")]),
        "--not must be followed by a filter flag, got nothing"
    );
    assert_eq!(err(&[("not", ""), ("not", "")]), "--not: consecutive --not");
    assert_eq!(
        err(&[("not", ""), ("follow", "")]),
        "--not must be followed by a filter flag, got --follow"
    );
    assert_eq!(
        err(&[("pod", "default/x"), ("ip", "10.0.0.1")]),
        "filters --pod and --ip cannot be combined"
    );
    assert_eq!(
        err(&[("label", "app=x"), ("from-label", "app=y")]),
        "filters --label and --from-label cannot be combined"
    );
    assert_eq!(
        err(&[("cluster", "c1"), ("to-cluster", "c2")]),
        "filters --cluster and --to-cluster cannot be combined"
    );
    assert_eq!(
        err(&[("from-pod", "default/x"), ("from-ip", "10.0.0.1")]),
        "filters --from-pod and --from-ip cannot be combined"
    );
    // The same flags are fine on different lists.
    build(&[("pod", "default/x"), ("not", ""), ("ip", "10.0.0.1")]).unwrap();
}
