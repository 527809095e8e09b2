//! Malformed policies are rejected with errors naming the object, the field and the reason,
//! and nothing of a file with one bad document is returned.
#![allow(clippy::unwrap_used)]

mod common;

use plexus_policy::{PolicyError, PolicyKind, parse_documents};

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\n  namespace: prod\nspec:\n{spec}"
    )
}

/// Parses and returns (object, field, reason) of the error.
fn err(yaml: &str) -> (String, String, String) {
    match parse_documents(yaml, "default").unwrap_err() {
        PolicyError::Invalid {
            object,
            field,
            reason,
        } => (object, field, reason),
        other => panic!("unexpected {other}"),
    }
}

fn assert_err(yaml: &str, field: &str, reason_part: &str) {
    let (object, f, reason) = err(yaml);
    assert_eq!(f, field, "{object}: {f}: {reason}");
    assert!(reason.contains(reason_part), "{object}: {f}: {reason}");
}

#[test]
fn wrong_types() {
    assert_err(
        &cnp("  endpointSelector: oops\n"),
        "spec.endpointSelector",
        "invalid type",
    );
    assert_err(
        &cnp("  endpointSelector: {}\n  ingress:\n  - fromEndpoints: {app: x}\n"),
        "spec.ingress[0].fromEndpoints",
        "invalid type",
    );
    assert_err(
        &cnp("  endpointSelector: {matchLabels: {app: [x]}}\n"),
        "spec.endpointSelector.matchLabels.app",
        "invalid type",
    );
    let (object, _, _) = err(&cnp("  endpointSelector: oops\n"));
    assert_eq!(object, "document 1 (CiliumNetworkPolicy prod/bad)");
}

#[test]
fn unknown_fields_are_named() {
    let (_, field, reason) = err(&cnp(
        "  endpointSelector: {}\n  ingress:\n  - fromEndpoint: [{}]\n",
    ));
    assert_eq!(field, "spec.ingress[0].fromEndpoint");
    assert!(reason.contains("unknown field `fromEndpoint`"), "{reason}");
    let (_, _, reason) = err(&cnp("  endpointSelector: {}\n  nodeSelector: {}\n"));
    assert!(reason.contains("unknown field `nodeSelector`"), "{reason}");
    let (_, _, reason) = err(&cnp(
        "  endpointSelector: {}\n  egress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{method: GET}]\n",
    ));
    assert!(
        reason.contains("unknown field `http`"),
        "L7 HTTP is not enforced: {reason}"
    );
    let (_, _, reason) = err(&cnp(
        "  endpointSelector: {}\n  egressDeny:\n  - toFQDNs: [{matchName: a.b}]\n",
    ));
    assert!(reason.contains("unknown field `toFQDNs`"), "{reason}");
}

#[test]
fn bad_values() {
    let ing = |rule: &str| {
        cnp(&format!(
            "  endpointSelector: {{}}\n  ingress:\n  - {rule}\n"
        ))
    };
    assert_err(
        &ing("fromCIDR: [10.0.0.0/33]"),
        "spec.ingress[0].fromCIDR[0]",
        "prefix length",
    );
    assert_err(
        &ing("fromCIDR: [not-an-ip]"),
        "spec.ingress[0].fromCIDR[0]",
        "not a CIDR",
    );
    assert_err(
        &ing("fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]"),
        "spec.ingress[0].fromCIDRSet[0].except[0]",
        "not inside",
    );
    assert_err(
        &ing("toPorts: [{ports: [{port: '99999'}]}]"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "not a port",
    );
    assert_err(
        &ing("toPorts: [{ports: [{port: '80', endPort: 79}]}]"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "below",
    );
    assert_err(
        &ing("toPorts: [{ports: [{port: 'http', endPort: 90}]}]"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "named port",
    );
    assert_err(
        &ing("toPorts: [{ports: [{port: '80', protocol: ICMP}]}]"),
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "not supported",
    );
    assert_err(
        &ing("toPorts: [{ports: [{port: Not_A_Name}]}]"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "neither",
    );
    assert_err(
        &ing("fromEntities: [everything]"),
        "spec.ingress[0].fromEntities[0]",
        "unknown entity",
    );
    assert_err(
        &ing("fromEndpoints: [{matchExpressions: [{key: app, operator: Equals, values: [x]}]}]"),
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
        "unknown variant `Equals`",
    );
    assert_err(
        &ing("fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]"),
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
        "at least one value",
    );
    assert_err(
        &ing("fromEndpoints: [{matchExpressions: [{key: app, operator: Exists, values: [x]}]}]"),
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values",
        "no values",
    );
    assert_err(&cnp("  ingress: []\n"), "spec.endpointSelector", "required");
    assert_err(
        &cnp("  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: 'bad name'}]\n"),
        "spec.egress[0].toFQDNs[0].matchName",
        "not a DNS name",
    );
    assert_err(
        &cnp(
            "  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: a.b, matchPattern: '*'}]\n",
        ),
        "spec.egress[0].toFQDNs[0]",
        "exactly one",
    );
}

#[test]
fn object_level_errors() {
    assert_err(
        "kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {}\nspec: {endpointSelector: {}}\n",
        "metadata.name",
        "required",
    );
    assert_err(
        "kind: CiliumNetworkPolicy\napiVersion: v1\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n",
        "apiVersion",
        "cilium.io/v2",
    );
    assert_err(
        "kind: Service\napiVersion: v1\nmetadata: {name: a}\n",
        "kind",
        "not a policy kind",
    );
    assert_err("apiVersion: v1\nmetadata: {name: a}\n", "kind", "required");
    assert_err(
        "kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: a}\n",
        "spec",
        "required",
    );
    assert_err(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  policyTypes: [Both]\n",
        "spec.policyTypes[0]",
        "not Ingress or Egress",
    );
    assert_err(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
        "spec.ingress[0].from[0].ipBlock",
        "cannot be combined",
    );
    assert_err(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  egress:\n  - ports: [{port: 80, protocol: ANY}]\n",
        "spec.egress[0].ports[0].protocol",
        "TCP, UDP or SCTP",
    );
}

#[test]
fn one_bad_document_and_nothing_is_returned() {
    let good = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: good}\nspec: {endpointSelector: {}, ingress: [{}]}\n";
    let text = format!(
        "{good}---\n{}",
        cnp("  endpointSelector: {}\n  ingress: [{fromCIDR: [300.0.0.0/8]}]\n")
    );
    let (object, field, _) = err(&text);
    assert_eq!(object, "document 2 (CiliumNetworkPolicy prod/bad)");
    assert_eq!(field, "spec.ingress[0].fromCIDR[0]");
    // The repository sees nothing: the caller only applies an Ok.
    let mut repo = common::repo("");
    if let Ok(policies) = parse_documents(&text, "default") {
        repo.upsert_all(policies);
    }
    assert!(repo.is_empty());
    // Duplicates within one file are an error too.
    let (_, field, reason) = err(&format!("{good}---\n{good}"));
    assert_eq!(field, "metadata.name");
    assert!(reason.contains("document 1"), "{reason}");
    // Syntax errors name the document.
    let e = parse_documents(&format!("{good}---\nkey: [unclosed\n"), "default").unwrap_err();
    assert!(matches!(e, PolicyError::Syntax { document: 2, .. }), "{e}");
    // Empty documents and JSON are fine.
    let json = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"j"},"spec":{"endpointSelector":{}}}"#;
    let parsed = parse_documents(&format!("---\n{json}\n---\n"), "default").unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(
        parsed[0].key.kind,
        PolicyKind::CiliumClusterwideNetworkPolicy
    );
    assert_eq!(parsed[0].key.namespace, "");
}

#[test]
fn error_message_format() {
    let e = parse_documents(
        &cnp("  endpointSelector: {}\n  ingress: [{fromCIDR: [x]}]\n"),
        "default",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "document 1 (CiliumNetworkPolicy prod/bad): spec.ingress[0].fromCIDR[0]: \"x\" is not a CIDR or an IP address"
    );
}
