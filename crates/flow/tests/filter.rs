//! Filter semantics: every field, OR inside a field, AND across fields, whitelist and
//! blacklist, and refused values.

#![allow(clippy::unwrap_used)]

mod common;

use common::{denied, forwarded, translated, udp_at};
use plexus_flow::{
    EventTypeFilter, Flow, FlowFilter, FlowRequest, Service, TrafficDirection, Verdict,
};

fn passes(filter: FlowFilter, flow: &Flow) -> bool {
    FlowRequest {
        whitelist: vec![filter],
        ..Default::default()
    }
    .matcher()
    .unwrap()
    .matches(flow)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn empty_request_passes_everything() {
    let m = FlowRequest::default().matcher().unwrap();
    assert!(m.matches(&denied()) && m.matches(&forwarded()) && m.matches(&Flow::default()));
    assert!(passes(FlowFilter::default(), &denied()));
}

#[test]
fn ip_filters_take_addresses_and_cidrs() {
    let f = denied(); // 10.60.1.7 -> 10.60.2.9
    let src = |v: &[&str]| FlowFilter {
        source_ip: s(v),
        ..Default::default()
    };
    let dst = |v: &[&str]| FlowFilter {
        destination_ip: s(v),
        ..Default::default()
    };
    assert!(passes(src(&["10.60.1.7"]), &f));
    assert!(passes(src(&["10.60.1.0/24"]), &f));
    assert!(passes(src(&["10.0.0.0/8"]), &f));
    assert!(passes(src(&["0.0.0.0/0"]), &f));
    assert!(!passes(src(&["10.60.2.0/24"]), &f));
    assert!(!passes(src(&["10.60.1.8"]), &f));
    assert!(
        passes(src(&["192.168.0.0/16", "10.60.1.7"]), &f),
        "values OR"
    );
    assert!(passes(dst(&["10.60.2.9/32"]), &f));
    assert!(!passes(dst(&["10.60.1.7"]), &f));
    assert!(!passes(src(&["fd00::/8"]), &f), "families never mix");
    let v6 = udp_at("2026-12-07T12:00:00Z", "fd00::1", "fd00:1::2");
    assert!(passes(src(&["fd00::/32"]), &v6));
    assert!(!passes(dst(&["fd00::/32"]), &v6));
    assert!(
        !passes(src(&["10.0.0.0/8"]), &Flow::default()),
        "no IP, no match"
    );
}

#[test]
fn pod_filters_are_namespace_and_name_prefix_on_their_side() {
    let f = denied(); // default/x-wing -> default/rebel-base-1
    let src = |v: &[&str]| FlowFilter {
        source_pod: s(v),
        ..Default::default()
    };
    let dst = |v: &[&str]| FlowFilter {
        destination_pod: s(v),
        ..Default::default()
    };
    assert!(passes(src(&["default/x-wing"]), &f));
    assert!(passes(src(&["default/x-"]), &f), "name prefix");
    assert!(passes(src(&["default/"]), &f), "whole namespace");
    assert!(passes(src(&["x-wing"]), &f), "no namespace: default");
    assert!(!passes(src(&["kube-system/"]), &f));
    assert!(!passes(src(&["kube-system/x-wing"]), &f));
    assert!(!passes(src(&["default/rebel"]), &f), "source side only");
    assert!(passes(dst(&["default/rebel"]), &f));
    assert!(passes(dst(&["default/rebel-base-1"]), &f));
    assert!(!passes(dst(&["default/rebel-base-2"]), &f));
    assert!(
        passes(dst(&["kube-system/", "default/rebel"]), &f),
        "values OR"
    );
    assert!(
        !passes(src(&["default/"]), &Flow::default()),
        "no pod, no match"
    );
}

#[test]
fn service_filters_match_the_flows_service() {
    let f = translated(); // destination_service default/rebel-base
    let dst = |v: &[&str]| FlowFilter {
        destination_service: s(v),
        ..Default::default()
    };
    assert!(passes(dst(&["default/rebel-base"]), &f));
    assert!(passes(dst(&["default/"]), &f));
    assert!(!passes(dst(&["default/x"]), &f));
    assert!(
        !passes(dst(&["default/rebel-base"]), &denied()),
        "no service"
    );
    let mut g = denied();
    g.source_service = Some(Service {
        name: "x-wing-svc".into(),
        namespace: "default".into(),
    });
    assert!(passes(
        FlowFilter {
            source_service: s(&["default/x-wing"]),
            ..Default::default()
        },
        &g
    ));
}

#[test]
fn label_filters_are_selectors() {
    let f = denied(); // source k8s:app=x-wing, k8s:class=fighter, k8s:io.kubernetes.pod.namespace=default
    let src = |v: &[&str]| FlowFilter {
        source_label: s(v),
        ..Default::default()
    };
    assert!(passes(src(&["app=x-wing"]), &f));
    assert!(passes(src(&["k8s:app=x-wing"]), &f), "with source");
    assert!(passes(src(&["any:app=x-wing"]), &f));
    assert!(!passes(src(&["reserved:app=x-wing"]), &f), "other source");
    assert!(passes(src(&["app==x-wing"]), &f));
    assert!(!passes(src(&["app=rebel-base"]), &f));
    assert!(passes(src(&["app=x-wing,class=fighter"]), &f), "terms AND");
    assert!(!passes(src(&["app=x-wing,class=bomber"]), &f), "terms AND");
    assert!(passes(src(&["app=nope", "class=fighter"]), &f), "values OR");
    assert!(passes(src(&["app"]), &f), "exists");
    assert!(!passes(src(&["tier"]), &f));
    assert!(passes(src(&["!tier"]), &f), "does not exist");
    assert!(!passes(src(&["!app"]), &f));
    assert!(passes(src(&["app!=rebel-base"]), &f));
    assert!(!passes(src(&["app!=x-wing"]), &f));
    assert!(passes(src(&["tier!=db"]), &f), "!= holds when absent");
    assert!(passes(src(&["app in (y-wing, x-wing)"]), &f));
    assert!(!passes(src(&["app in (y-wing,b-wing)"]), &f));
    assert!(passes(
        src(&["app notin (y-wing,b-wing),class=fighter"]),
        &f
    ));
    assert!(!passes(src(&["app notin (x-wing)"]), &f));
    assert!(passes(
        FlowFilter {
            destination_label: s(&["k8s:app=rebel-base"]),
            ..Default::default()
        },
        &f
    ));
    assert!(!passes(
        FlowFilter {
            destination_label: s(&["app=x-wing"]),
            ..Default::default()
        },
        &f
    ));
}

#[test]
fn identity_cluster_verdict_direction_filters_are_exact() {
    let f = denied();
    let check =
        |filter: FlowFilter, want: bool| assert_eq!(passes(filter.clone(), &f), want, "{filter:?}");
    check(
        FlowFilter {
            source_identity: vec![38354],
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            source_identity: vec![6587186],
            ..Default::default()
        },
        false,
    );
    check(
        FlowFilter {
            destination_identity: vec![1, 6587186],
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            source_cluster_name: s(&["c1"]),
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            source_cluster_name: s(&["c2"]),
            ..Default::default()
        },
        false,
    );
    check(
        FlowFilter {
            destination_cluster_name: s(&["c2"]),
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            verdict: vec![Verdict::Dropped],
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            verdict: vec![Verdict::Forwarded, Verdict::Translated],
            ..Default::default()
        },
        false,
    );
    check(
        FlowFilter {
            traffic_direction: vec![TrafficDirection::Ingress],
            ..Default::default()
        },
        true,
    );
    check(
        FlowFilter {
            traffic_direction: vec![TrafficDirection::Egress],
            ..Default::default()
        },
        false,
    );
}

#[test]
fn protocol_and_port_filters() {
    let tcp = denied(); // TCP 41234 -> 80
    let udp = udp_at("2026-12-07T12:00:00Z", "10.0.0.1", "10.0.0.2"); // UDP 5353 -> 53
    let icmp = Flow {
        l4: plexus_flow::Layer4::from_raw(1, 8, 0, 0),
        ..Default::default()
    };
    let proto = |v: &[&str]| FlowFilter {
        protocol: s(v),
        ..Default::default()
    };
    assert!(passes(proto(&["tcp"]), &tcp));
    assert!(passes(proto(&["TCP"]), &tcp));
    assert!(!passes(proto(&["udp"]), &tcp));
    assert!(passes(proto(&["udp", "tcp"]), &udp));
    assert!(passes(proto(&["icmp"]), &icmp));
    assert!(passes(proto(&["icmpv4"]), &icmp));
    assert!(!passes(proto(&["icmpv6"]), &icmp));
    assert!(!passes(proto(&["tcp"]), &Flow::default()));
    let sport = |v: &[&str]| FlowFilter {
        source_port: s(v),
        ..Default::default()
    };
    let dport = |v: &[&str]| FlowFilter {
        destination_port: s(v),
        ..Default::default()
    };
    assert!(passes(dport(&["80"]), &tcp));
    assert!(!passes(dport(&["41234"]), &tcp));
    assert!(passes(sport(&["41234"]), &tcp));
    assert!(passes(dport(&["53", "80"]), &udp));
    assert!(!passes(dport(&["8"]), &icmp), "ICMP has no ports");
}

#[test]
fn event_type_filters_and_policy_verdicts_take_policy_drops() {
    let drop = denied();
    let trace = forwarded(); // trace, sub-type 0 (to-endpoint)
    let xlate = translated();
    let ev = |t: Vec<EventTypeFilter>| FlowFilter {
        event_type: t,
        ..Default::default()
    };
    let of = EventTypeFilter::of_type;
    assert!(passes(ev(vec![of(1)]), &drop));
    assert!(!passes(ev(vec![of(4)]), &drop));
    assert!(passes(ev(vec![of(4)]), &trace));
    assert!(passes(ev(vec![of(7)]), &xlate));
    assert!(passes(ev(vec![of(4), of(7)]), &xlate));
    let sub = |t, s| EventTypeFilter {
        r#type: t,
        match_sub_type: true,
        sub_type: s,
    };
    assert!(
        passes(ev(vec![sub(4, 0)]), &trace),
        "sub-type 0 is to-endpoint"
    );
    assert!(!passes(ev(vec![sub(4, 5)]), &trace));
    assert!(passes(ev(vec![sub(1, 133)]), &drop));
    // policy-verdict (5) also matches drops whose reason is a policy denial...
    assert!(passes(ev(vec![of(5)]), &drop));
    // ...but not other drops, nor traces.
    let other_drop = Flow::drop(
        drop.time,
        "c/n",
        plexus_flow::DropReasonInfo::from_plexus(3),
    );
    assert!(!passes(ev(vec![of(5)]), &other_drop));
    assert!(!passes(ev(vec![of(5)]), &trace));
    let verdict = Flow::policy_verdict(drop.time, "c/n", TrafficDirection::Egress, 2);
    assert!(passes(ev(vec![of(5)]), &verdict));
}

#[test]
fn node_name_filters_are_cluster_node_globs() {
    let f = denied(); // node c2/n1
    let node = |v: &[&str]| FlowFilter {
        node_name: s(v),
        ..Default::default()
    };
    assert!(passes(node(&["c2/n1"]), &f));
    assert!(passes(node(&["c2/"]), &f), "whole cluster");
    assert!(passes(node(&["c2/n*"]), &f));
    assert!(passes(node(&["c*/n1"]), &f));
    assert!(passes(node(&["n1"]), &f), "node in any cluster");
    assert!(passes(node(&["n*"]), &f));
    assert!(!passes(node(&["c1/"]), &f));
    assert!(!passes(node(&["c2/n2"]), &f));
    assert!(!passes(node(&["c2"]), &f), "no slash: a node name");
    assert!(passes(node(&["c1/", "c2/"]), &f), "values OR");
}

#[test]
fn fields_and_while_values_or() {
    let f = denied();
    let both = FlowFilter {
        source_pod: s(&["default/x-wing"]),
        verdict: vec![Verdict::Dropped],
        destination_port: s(&["80"]),
        ..Default::default()
    };
    assert!(passes(both.clone(), &f));
    let one_fails = FlowFilter {
        verdict: vec![Verdict::Forwarded],
        ..both
    };
    assert!(!passes(one_fails, &f));
}

#[test]
fn whitelist_or_and_blacklist_excludes() {
    let drop = denied();
    let trace = forwarded();
    let xlate = translated();
    let dropped = FlowFilter {
        verdict: vec![Verdict::Dropped],
        ..Default::default()
    };
    let translated_f = FlowFilter {
        verdict: vec![Verdict::Translated],
        ..Default::default()
    };
    let m = FlowRequest {
        whitelist: vec![dropped.clone(), translated_f.clone()],
        ..Default::default()
    }
    .matcher()
    .unwrap();
    assert!(m.matches(&drop) && m.matches(&xlate) && !m.matches(&trace));

    let m = FlowRequest {
        blacklist: vec![dropped.clone()],
        ..Default::default()
    }
    .matcher()
    .unwrap();
    assert!(!m.matches(&drop) && m.matches(&xlate) && m.matches(&trace));

    // Whitelisted but also blacklisted: excluded.
    let m = FlowRequest {
        whitelist: vec![FlowFilter {
            source_pod: s(&["default/x-wing"]),
            ..Default::default()
        }],
        blacklist: vec![translated_f, dropped],
        ..Default::default()
    }
    .matcher()
    .unwrap();
    assert!(m.matches(&trace) && !m.matches(&drop) && !m.matches(&xlate));
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let err = |f: FlowFilter, blacklist: bool| {
        let req = if blacklist {
            FlowRequest {
                blacklist: vec![FlowFilter::default(), f],
                ..Default::default()
            }
        } else {
            FlowRequest {
                whitelist: vec![f],
                ..Default::default()
            }
        };
        req.matcher().unwrap_err().to_string()
    };
    assert_eq!(
        err(
            FlowFilter {
                source_ip: s(&["10.0.0.300"]),
                ..Default::default()
            },
            false
        ),
        r#"flow filter whitelist[0].source_ip: "10.0.0.300": not an IP address or CIDR"#
    );
    let e = err(
        FlowFilter {
            destination_ip: s(&["10.0.0.0/33"]),
            ..Default::default()
        },
        true,
    );
    assert!(
        e.starts_with(r#"flow filter blacklist[1].destination_ip: "10.0.0.0/33": "#),
        "{e}"
    );
    let e = err(
        FlowFilter {
            source_pod: s(&["/"]),
            ..Default::default()
        },
        false,
    );
    assert!(e.contains("whitelist[0].source_pod"), "{e}");
    let e = err(
        FlowFilter {
            source_label: s(&["app in (a"]),
            ..Default::default()
        },
        false,
    );
    assert!(
        e.contains("whitelist[0].source_label") && e.contains("parenthesis"),
        "{e}"
    );
    let e = err(
        FlowFilter {
            protocol: s(&["http"]),
            ..Default::default()
        },
        false,
    );
    assert!(
        e.contains("whitelist[0].protocol") && e.contains("expected tcp"),
        "{e}"
    );
    let e = err(
        FlowFilter {
            destination_port: s(&["http"]),
            ..Default::default()
        },
        false,
    );
    assert!(
        e.contains("whitelist[0].destination_port") && e.contains("port number"),
        "{e}"
    );
    let e = err(
        FlowFilter {
            node_name: s(&[""]),
            ..Default::default()
        },
        false,
    );
    assert!(e.contains("whitelist[0].node_name"), "{e}");
}
