//! What a DNS response teaches, and which `toFQDNs` selectors a name concerns.
//!
//! [`learn_from_response`] reads a successful response (NOERROR, one question) and returns the
//! addresses of its answer section per name: the question's name gets the `A`/`AAAA` records
//! reached from it, following the CNAME chain, and so does every name of the chain (a policy
//! may select the alias or the canonical name, as in Cilium). An address's TTL is the smallest
//! TTL along the chain that leads to it. Records that the chain does not reach (unrelated
//! names a server adds) are ignored: they were not asked for, and trusting them would let a
//! server plant addresses under any name.
//!
//! [`FqdnSelectors`] holds the `toFQDNs` patterns of the node's policies; a learned name counts
//! for the selectors whose pattern matches it ([`plexus_policy::fqdn::matches`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use plexus_policy::fqdn;

/// The addresses one response gave one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The name, normalized (lower case, no trailing dot).
    pub name: String,
    /// Each address with its TTL in seconds.
    pub addresses: BTreeMap<IpAddr, u32>,
}

/// The addresses a response gives, per name (the question's name first, then the CNAME chain
/// in order). Empty for anything but a NOERROR response with one question, and for a response
/// without addresses.
pub fn learn_from_response(msg: &Message) -> Vec<Learned> {
    if msg.metadata.message_type != MessageType::Response
        || msg.metadata.response_code != ResponseCode::NoError
    {
        return Vec::new();
    }
    let [question] = msg.queries.as_slice() else {
        return Vec::new();
    };
    // Follow the chain: each step is a name with the smallest TTL on the way to it.
    let mut chain: Vec<(String, u32)> =
        vec![(fqdn::normalize(&question.name().to_ascii()), u32::MAX)];
    while let Some((current, ttl)) = chain.last().cloned() {
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if fqdn::normalize(&r.name.to_ascii()) == current => {
                Some((fqdn::normalize(&target.0.to_ascii()), ttl.min(r.ttl)))
            }
            _ => None,
        });
        match next {
            // A loop in the chain ends it.
            Some((name, ttl)) if !chain.iter().any(|(n, _)| *n == name) => {
                chain.push((name, ttl));
            }
            _ => break,
        }
    }
    let mut addresses: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for r in &msg.answers {
        let ip: IpAddr = match &r.data {
            RData::A(a) => a.0.into(),
            RData::AAAA(a) => a.0.into(),
            _ => continue,
        };
        let owner = fqdn::normalize(&r.name.to_ascii());
        let Some((_, chain_ttl)) = chain.iter().find(|(n, _)| *n == owner) else {
            continue;
        };
        let ttl = r.ttl.min(*chain_ttl);
        addresses
            .entry(ip)
            .and_modify(|t| *t = (*t).min(ttl))
            .or_insert(ttl);
    }
    if addresses.is_empty() {
        return Vec::new();
    }
    chain
        .into_iter()
        .map(|(name, _)| Learned {
            name,
            addresses: addresses.clone(),
        })
        .collect()
}

/// The `toFQDNs` patterns (`matchName` values are patterns without `*`) of the node's
/// policies, normalized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FqdnSelectors {
    patterns: BTreeSet<String>,
}

impl FqdnSelectors {
    /// The selectors of these patterns (normalized here).
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self {
            patterns: patterns
                .into_iter()
                .map(|p| fqdn::normalize(p.as_ref()))
                .collect(),
        }
    }

    /// Every pattern.
    pub fn patterns(&self) -> &BTreeSet<String> {
        &self.patterns
    }

    /// The patterns that match a name (normalized here).
    pub fn matching(&self, name: &str) -> BTreeSet<String> {
        let name = fqdn::normalize(name);
        self.patterns
            .iter()
            .filter(|p| fqdn::matches(p, &name))
            .cloned()
            .collect()
    }

    /// Whether any pattern matches a name.
    pub fn selects(&self, name: &str) -> bool {
        let name = fqdn::normalize(name);
        self.patterns.iter().any(|p| fqdn::matches(p, &name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{Name, Record, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(q: &str, answers: Vec<Record>) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(Query::query(name(q), RecordType::A));
        m.add_answers(answers);
        m
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse().unwrap())))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn addrs(list: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
        list.iter()
            .map(|(ip, t)| (ip.parse().unwrap(), *t))
            .collect()
    }

    #[test]
    fn a_and_aaaa_records_of_the_question() {
        let m = response(
            "WWW.Example.test.",
            vec![
                a("www.example.test.", 30, "192.0.2.10"),
                a("www.example.test.", 10, "192.0.2.11"),
                Record::from_rdata(
                    name("www.example.test."),
                    60,
                    RData::AAAA(AAAA("2001:db8::10".parse().unwrap())),
                ),
                Record::from_rdata(
                    name("www.example.test."),
                    60,
                    RData::TXT(TXT::new(vec!["x".into()])),
                ),
            ],
        );
        assert_eq!(
            learn_from_response(&m),
            vec![Learned {
                name: "www.example.test".into(),
                addresses: addrs(&[("192.0.2.10", 30), ("192.0.2.11", 10), ("2001:db8::10", 60)]),
            }]
        );
    }

    #[test]
    fn cname_chains_give_every_name_the_addresses_with_the_smallest_ttl() {
        let m = response(
            "alias.example.test.",
            vec![
                cname("alias.example.test.", 20, "mid.example.test."),
                cname("mid.example.test.", 300, "real.cdn.test."),
                a("real.cdn.test.", 60, "192.0.2.20"),
                // Not on the chain: ignored.
                a("planted.bank.test.", 60, "192.0.2.66"),
            ],
        );
        let learned = learn_from_response(&m);
        let names: Vec<&str> = learned.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["alias.example.test", "mid.example.test", "real.cdn.test"]
        );
        for l in &learned {
            assert_eq!(l.addresses, addrs(&[("192.0.2.20", 20)]));
        }
    }

    #[test]
    fn failures_loops_and_empty_answers_teach_nothing() {
        let mut nx = response(
            "gone.example.test.",
            vec![a("gone.example.test.", 5, "192.0.2.1")],
        );
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert!(learn_from_response(&nx).is_empty());
        assert!(learn_from_response(&response("empty.example.test.", vec![])).is_empty());
        let looped = response(
            "a.test.",
            vec![
                cname("a.test.", 5, "b.test."),
                cname("b.test.", 5, "a.test."),
            ],
        );
        assert!(learn_from_response(&looped).is_empty());
        let mut query = Message::query();
        query.add_query(Query::query(name("a.test."), RecordType::A));
        query.add_answer(a("a.test.", 5, "192.0.2.1"));
        assert!(
            learn_from_response(&query).is_empty(),
            "a query is not an answer"
        );
    }

    #[test]
    fn selectors_matching_a_name() {
        let s = FqdnSelectors::new(["*.Example.test.", "www.example.test", "*", "api.other.test"]);
        assert_eq!(
            s.matching("WWW.example.test."),
            ["*", "*.example.test", "www.example.test"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert_eq!(s.matching("a.b.example.test").len(), 1, "only `*`");
        let narrow = FqdnSelectors::new(["*.example.test"]);
        assert!(narrow.selects("x.example.test"));
        assert!(!narrow.selects("example.test"));
    }
}
