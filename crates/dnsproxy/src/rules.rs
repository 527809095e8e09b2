//! Per-endpoint DNS rules and the decision for one query.
//!
//! The agent gives [`DnsRules`] each local endpoint's resolved policy: the L4 entries the
//! datapath enforces ([`EndpointPolicy`]) and the names its `rules.dns` allow per server and
//! port ([`DnsPolicy`], from [`plexus_policy::PolicyRepository::resolve_dns`]). For a query the
//! proxy received from an endpoint, [`DnsRules::decide`] answers:
//! - [`Decision::Refuse`] when the endpoint is unknown (fail closed: the proxy only sees
//!   queries of endpoints whose policy asked for it), when the endpoint's policy denies the
//!   server and port at L4, or when DNS rules cover the server and port and none allows the
//!   name;
//! - [`Decision::Forward`] otherwise (the name is allowed, or no DNS rule covers that server and
//!   port: a lookup the datapath would not redirect in the first place).
//!
//! A refused query gets a REFUSED response ([`refused`]), as Cilium's proxy sends by default
//! (`--tofqdns-dns-reject-response-code=refused`), so the client fails at once instead of
//! waiting for a timeout.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use plexus_model::identity::NumericIdentity;
use plexus_policy::resolved::Verdict;
use plexus_policy::{Direction, DnsPolicy, EndpointPolicy, Proto};

/// A local endpoint, by the agent's endpoint id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u64);

/// One DNS query as the proxy sees it: where it was sent and the name asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The security identity of the DNS server it was sent to.
    pub server: NumericIdentity,
    /// The server's address (prefix rules such as `toCIDR` match on it).
    pub server_ip: IpAddr,
    /// UDP or TCP.
    pub proto: Proto,
    /// The server's port.
    pub port: u16,
    /// The name asked for, as written in the question (any case, trailing dot or not).
    pub name: &'a str,
}

/// Why a query is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The proxy holds no rules for the endpoint.
    UnknownEndpoint,
    /// The endpoint's policy does not allow the server on that port at all.
    PortDenied,
    /// DNS rules cover the server and port, and none allows the name.
    NameNotAllowed,
}

/// What the proxy does with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send it on to the server it was addressed to.
    Forward,
    /// Answer REFUSED.
    Refuse(RefuseReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointRules {
    l4: EndpointPolicy,
    dns: DnsPolicy,
}

/// The DNS rules of every local endpoint.
#[derive(Clone, Debug, Default)]
pub struct DnsRules {
    endpoints: HashMap<EndpointId, EndpointRules>,
}

impl DnsRules {
    /// No endpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an endpoint's rules (after each resolution of its policy); returns whether they
    /// changed.
    pub fn set(&mut self, endpoint: EndpointId, l4: EndpointPolicy, dns: DnsPolicy) -> bool {
        let rules = EndpointRules { l4, dns };
        self.endpoints.insert(endpoint, rules.clone()) != Some(rules)
    }

    /// The endpoints with rules.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointId> + '_ {
        self.endpoints.keys().copied()
    }

    /// Forgets an endpoint; returns whether it was known.
    pub fn remove(&mut self, endpoint: EndpointId) -> bool {
        self.endpoints.remove(&endpoint).is_some()
    }

    /// Number of endpoints with rules.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Whether queries of `endpoint` to this server and port go through the proxy: some DNS
    /// rule covers them (what the datapath redirect is programmed from).
    pub fn redirects(
        &self,
        endpoint: EndpointId,
        server: NumericIdentity,
        server_ip: IpAddr,
        proto: Proto,
        port: u16,
    ) -> bool {
        self.endpoints.get(&endpoint).is_some_and(|r| {
            r.dns.egress_enforced && r.dns.has_dns_rules(server, Some(server_ip), proto, port)
        })
    }

    /// The decision for one query of `endpoint`.
    pub fn decide(&self, endpoint: EndpointId, query: &Query<'_>) -> Decision {
        let Some(rules) = self.endpoints.get(&endpoint) else {
            return Decision::Refuse(RefuseReason::UnknownEndpoint);
        };
        let ip = Some(query.server_ip);
        let l4 = rules
            .l4
            .verdict(Direction::Egress, query.server, ip, query.proto, query.port);
        if l4 == Verdict::Deny {
            return Decision::Refuse(RefuseReason::PortDenied);
        }
        // Without enforced egress every allow is implicit, so DNS rules restrict nothing (as in
        // Cilium, where an L7 rule always comes with default deny for its direction).
        if !rules.dns.egress_enforced
            || !rules
                .dns
                .has_dns_rules(query.server, ip, query.proto, query.port)
        {
            return Decision::Forward;
        }
        let name = plexus_policy::fqdn::normalize(query.name);
        if rules
            .dns
            .allows(query.server, ip, query.proto, query.port, &name)
        {
            Decision::Forward
        } else {
            Decision::Refuse(RefuseReason::NameNotAllowed)
        }
    }
}

/// Why bytes are not a query the proxy handles.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a DNS message.
    #[error("not a DNS message: {0}")]
    Decode(String),
    /// A DNS message, but not a standard query with one question.
    #[error("DNS message {id}: {reason}")]
    Unsupported {
        /// The message id.
        id: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The response could not be encoded.
    #[error("encoding the response to DNS message {id}: {reason}")]
    Encode {
        /// The message id.
        id: u16,
        /// The encoder's error.
        reason: String,
    },
}

/// Decodes a query: a standard query (`QUERY` opcode, QR clear) with exactly one question.
/// Returns the message and its question's name (as written, with the trailing dot).
pub fn parse_query(bytes: &[u8]) -> Result<(Message, String), MessageError> {
    let msg = Message::from_vec(bytes).map_err(|e| MessageError::Decode(e.to_string()))?;
    let id = msg.metadata.id;
    let unsupported = |reason| Err(MessageError::Unsupported { id, reason });
    if msg.metadata.message_type != MessageType::Query {
        return unsupported("is a response, not a query");
    }
    if msg.metadata.op_code != OpCode::Query {
        return unsupported("is not a standard query (opcode QUERY)");
    }
    let name = match msg.queries.as_slice() {
        [q] => q.name().to_ascii(),
        _ => return unsupported("does not have exactly one question"),
    };
    Ok((msg, name))
}

/// The REFUSED response to `query`: same id, opcode, question and RD bit; no records; an OPT
/// record when the query had one (RFC 6891 asks for it).
pub fn refused(query: &Message) -> Message {
    let mut out = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::Refused,
    );
    out.metadata.recursion_desired = query.metadata.recursion_desired;
    out.metadata.recursion_available = true;
    out.queries = query.queries.clone();
    if query.edns.is_some() {
        out.edns = Some(Edns::new());
    }
    out
}

/// Encodes a message to wire bytes.
pub fn encode(msg: &Message) -> Result<Vec<u8>, MessageError> {
    msg.to_vec().map_err(|e| MessageError::Encode {
        id: msg.metadata.id,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::op::Query as Question;
    use hickory_proto::rr::{Name, RecordType};
    use plexus_policy::{
        EndpointInfo, IdentityChange, PolicyConfig, PolicyRepository, parse_documents,
    };

    const C1: u32 = 65536;
    const CLIENT: EndpointId = EndpointId(7);
    const DNS_ID: NumericIdentity = NumericIdentity(C1 + 53);
    const OTHER_ID: NumericIdentity = NumericIdentity(C1 + 80);

    use crate::testing::pod_labels as labels;

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.test"}]
  - toCIDR: [192.0.2.53/32]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchName: only.example.test}]
  - toEndpoints:
    - matchLabels: {app: resolver}
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
"#;

    fn rules(yaml: &str) -> DnsRules {
        let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
        repo.upsert_all(parse_documents(yaml, "default").unwrap());
        let client = labels("client", "default");
        repo.update_identities([
            IdentityChange::Upsert(NumericIdentity(C1 + 1), client.clone()),
            IdentityChange::Upsert(DNS_ID, labels("kube-dns", "kube-system")),
            IdentityChange::Upsert(OTHER_ID, labels("resolver", "default")),
        ]);
        let info = EndpointInfo {
            labels: client,
            named_ports: Default::default(),
        };
        let mut out = DnsRules::new();
        assert!(out.set(CLIENT, repo.resolve(&info), repo.resolve_dns(&info)));
        assert!(!out.set(CLIENT, repo.resolve(&info), repo.resolve_dns(&info)));
        out
    }

    fn query<'a>(server: NumericIdentity, ip: &str, proto: Proto, name: &'a str) -> Query<'a> {
        Query {
            server,
            server_ip: ip.parse().unwrap(),
            proto,
            port: 53,
            name,
        }
    }

    #[test]
    fn names_allowed_per_server_and_port() {
        let r = rules(POLICY);
        let kube_dns = |name| query(DNS_ID, "10.96.0.10", Proto::Udp, name);
        assert_eq!(
            r.decide(CLIENT, &kube_dns("www.example.test")),
            Decision::Forward
        );
        assert_eq!(
            r.decide(CLIENT, &kube_dns("WWW.Example.Test.")),
            Decision::Forward,
            "names compare in lower case without the trailing dot"
        );
        assert_eq!(
            r.decide(CLIENT, &kube_dns("example.test")),
            Decision::Refuse(RefuseReason::NameNotAllowed)
        );
        assert_eq!(
            r.decide(CLIENT, &kube_dns("evil.org")),
            Decision::Refuse(RefuseReason::NameNotAllowed)
        );
        // TCP on port 53 too (protocol ANY).
        let tcp = query(DNS_ID, "10.96.0.10", Proto::Tcp, "a.example.test");
        assert_eq!(r.decide(CLIENT, &tcp), Decision::Forward);
        // Another port of the DNS server: denied at L4.
        let mut other_port = kube_dns("a.example.test");
        other_port.port = 5353;
        assert_eq!(
            r.decide(CLIENT, &other_port),
            Decision::Refuse(RefuseReason::PortDenied)
        );
        assert!(r.redirects(
            CLIENT,
            DNS_ID,
            "10.96.0.10".parse().unwrap(),
            Proto::Udp,
            53
        ));
        assert!(!r.redirects(
            CLIENT,
            DNS_ID,
            "10.96.0.10".parse().unwrap(),
            Proto::Udp,
            54
        ));
    }

    #[test]
    fn prefix_servers_and_servers_without_dns_rules() {
        let r = rules(POLICY);
        let world = NumericIdentity(2);
        let outside = |name| query(world, "192.0.2.53", Proto::Udp, name);
        assert_eq!(
            r.decide(CLIENT, &outside("only.example.test")),
            Decision::Forward
        );
        assert_eq!(
            r.decide(CLIENT, &outside("www.example.test")),
            Decision::Refuse(RefuseReason::NameNotAllowed)
        );
        assert_eq!(
            r.decide(
                CLIENT,
                &query(world, "192.0.2.54", Proto::Udp, "only.example.test")
            ),
            Decision::Refuse(RefuseReason::PortDenied)
        );
        // An allow without DNS rules: not redirected, every name forwarded.
        let resolver = query(OTHER_ID, "10.1.0.9", Proto::Udp, "anything.org");
        assert_eq!(r.decide(CLIENT, &resolver), Decision::Forward);
        assert!(!r.redirects(
            CLIENT,
            OTHER_ID,
            "10.1.0.9".parse().unwrap(),
            Proto::Udp,
            53
        ));
    }

    #[test]
    fn unknown_endpoints_are_refused_and_removal_forgets() {
        let mut r = rules(POLICY);
        let q = query(DNS_ID, "10.96.0.10", Proto::Udp, "www.example.test");
        assert_eq!(
            r.decide(EndpointId(8), &q),
            Decision::Refuse(RefuseReason::UnknownEndpoint)
        );
        assert!(r.remove(CLIENT));
        assert!(!r.remove(CLIENT));
        assert!(r.is_empty());
        assert_eq!(
            r.decide(CLIENT, &q),
            Decision::Refuse(RefuseReason::UnknownEndpoint)
        );
    }

    #[test]
    fn without_egress_enforcement_everything_is_forwarded() {
        let r = rules(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{}]
"#,
        );
        let q = query(DNS_ID, "10.96.0.10", Proto::Udp, "evil.org");
        assert_eq!(r.decide(CLIENT, &q), Decision::Forward);
        assert!(!r.redirects(
            CLIENT,
            DNS_ID,
            "10.96.0.10".parse().unwrap(),
            Proto::Udp,
            53
        ));
    }

    #[test]
    fn refused_response_echoes_the_question() {
        let mut q = Message::query();
        q.metadata.id = 0x1234;
        q.metadata.recursion_desired = true;
        q.add_query(Question::query(
            Name::from_ascii("evil.org.").unwrap(),
            RecordType::A,
        ));
        q.set_edns(Edns::new());
        let bytes = encode(&q).unwrap();
        let (parsed, name) = parse_query(&bytes).unwrap();
        assert_eq!(name, "evil.org.");
        let resp = refused(&parsed);
        let wire = encode(&resp).unwrap();
        let back = Message::from_vec(&wire).unwrap();
        assert_eq!(back.metadata.id, 0x1234);
        assert_eq!(back.metadata.message_type, MessageType::Response);
        assert_eq!(back.metadata.response_code, ResponseCode::Refused);
        assert!(back.metadata.recursion_desired);
        assert_eq!(back.queries, q.queries);
        assert!(back.answers.is_empty());
        assert!(back.edns.is_some());
    }

    #[test]
    fn only_standard_queries_with_one_question() {
        assert!(matches!(
            parse_query(b"\x00\x01"),
            Err(MessageError::Decode(_))
        ));
        let mut two = Message::query();
        two.metadata.id = 9;
        let name = Name::from_ascii("a.test.").unwrap();
        two.add_query(Question::query(name.clone(), RecordType::A));
        two.add_query(Question::query(name.clone(), RecordType::AAAA));
        let err = parse_query(&encode(&two).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DNS message 9: does not have exactly one question"
        );
        let mut resp = Message::response(10, OpCode::Query);
        resp.add_query(Question::query(name, RecordType::A));
        let err = parse_query(&encode(&resp).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DNS message 10: is a response, not a query"
        );
    }
}
