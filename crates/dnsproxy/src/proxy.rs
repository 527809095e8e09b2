//! The proxy's exchange logic: a query from a pod in, what to send out; a server's response
//! in, what to apply and when to pass it on. No sockets and no clock of its own.
//!
//! [`DnsProxy::on_query`] decides with the endpoint's [`DnsRules`]: a refused query is answered
//! at once with REFUSED ([`QueryAction::Reply`]); an allowed one is sent on unchanged
//! ([`QueryAction::Forward`]) and remembered by (flow, message id, question) until its
//! response comes or [`ProxyConfig::query_timeout`] passes. Bytes that are not a query get no
//! answer (a client retries or gives up, as with a lost datagram).
//!
//! [`DnsProxy::on_response`] accepts only the response to a query it forwarded on that flow
//! (same id and question; anything else is dropped, so nobody plants addresses by sending
//! answers nobody asked for), learns from it ([`Learner`]), and:
//! - passes it on at once when nothing changed ([`ResponseAction::Deliver`]);
//! - otherwise holds it ([`ResponseAction::Hold`]) with the changes to apply (identities,
//!   ipcache, names): the caller applies them and calls [`DnsProxy::applied`], which releases
//!   the response. A client must not connect to an address before the datapath allows it, but
//!   must not wait long either: [`DnsProxy::poll`] releases a hold after
//!   [`ProxyConfig::hold_max`] (Cilium's `--tofqdns-proxy-response-max-delay`, 100 ms).
//!
//! [`DnsProxy::next_deadline`] says when `poll` has work.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use plexus_model::identity::NumericIdentity;
use plexus_policy::Proto;

use crate::identity::IdentityError;
use crate::learner::{Change, Learner};
use crate::rules::{
    Decision, DnsRules, EndpointId, MessageError, Query, RefuseReason, encode, parse_query, refused,
};

/// Timing options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The longest a response is held for its changes to be applied.
    pub hold_max: Duration,
    /// How long a forwarded query waits for its response.
    pub query_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            hold_max: Duration::from_millis(100),
            query_timeout: Duration::from_secs(10),
        }
    }
}

/// One exchange path: which endpoint asked which server, from where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The endpoint that asked.
    pub endpoint: EndpointId,
    /// Its socket address.
    pub client: SocketAddr,
    /// The server it asked.
    pub server: SocketAddr,
    /// The server's security identity.
    pub server_identity: NumericIdentity,
    /// UDP or TCP.
    pub proto: Proto,
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryAction {
    /// Send these bytes (the query, unchanged) to the server.
    Forward(Vec<u8>),
    /// Send these bytes (REFUSED) back to the client.
    Reply {
        /// The response.
        bytes: Vec<u8>,
        /// Why the query was refused.
        reason: RefuseReason,
    },
    /// Send nothing.
    Drop(MessageError),
}

/// A held response ([`ResponseAction::Hold`]), released by [`DnsProxy::applied`] or
/// [`DnsProxy::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HoldId(pub u64);

/// Why a response is not passed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a DNS response.
    Malformed(String),
    /// No forwarded query on this flow has its id and question (or it timed out).
    Unsolicited,
}

/// What to do with a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseAction {
    /// Send these bytes to the client now.
    Deliver(Vec<u8>),
    /// Apply `changes` in order, then call [`DnsProxy::applied`] with `id`.
    Hold {
        /// The hold.
        id: HoldId,
        /// What to apply before the client sees the answer.
        changes: Vec<Change>,
    },
    /// Send nothing.
    Drop(DropReason),
}

/// A response released from a hold: send `bytes` to `flow.client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The exchange.
    pub flow: Flow,
    /// The response.
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Pending {
    question: String,
    deadline: Instant,
}

#[derive(Clone, Debug)]
struct Held {
    flow: Flow,
    bytes: Vec<u8>,
    deadline: Instant,
}

/// The proxy's state: rules, learning, forwarded queries and held responses.
#[derive(Debug)]
pub struct DnsProxy {
    config: ProxyConfig,
    /// The rules of every local endpoint (set by the caller as policies resolve).
    pub rules: DnsRules,
    learner: Learner,
    pending: HashMap<(Flow, u16), Pending>,
    held: BTreeMap<HoldId, Held>,
    next_hold: u64,
}

impl DnsProxy {
    /// A proxy with no endpoints, learning with `learner`.
    pub fn new(config: ProxyConfig, learner: Learner) -> Self {
        Self {
            config,
            rules: DnsRules::new(),
            learner,
            pending: HashMap::new(),
            held: BTreeMap::new(),
            next_hold: 0,
        }
    }

    /// Its timing options.
    pub fn config(&self) -> ProxyConfig {
        self.config
    }

    /// The learner (to change its selectors or expire addresses).
    pub fn learner_mut(&mut self) -> &mut Learner {
        &mut self.learner
    }

    /// The learner (read-only).
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// Number of forwarded queries waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Number of held responses.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A query from a pod.
    pub fn on_query(&mut self, flow: Flow, bytes: &[u8], now: Instant) -> QueryAction {
        let (msg, name) = match parse_query(bytes) {
            Ok(parsed) => parsed,
            Err(e) => return QueryAction::Drop(e),
        };
        let query = Query {
            server: flow.server_identity,
            server_ip: flow.server.ip(),
            proto: flow.proto,
            port: flow.server.port(),
            name: &name,
        };
        match self.rules.decide(flow.endpoint, &query) {
            Decision::Refuse(reason) => match encode(&refused(&msg)) {
                Ok(bytes) => QueryAction::Reply { bytes, reason },
                Err(e) => QueryAction::Drop(e),
            },
            Decision::Forward => {
                self.pending.insert(
                    (flow, msg.metadata.id),
                    Pending {
                        question: plexus_policy::fqdn::normalize(&name),
                        deadline: now + self.config.query_timeout,
                    },
                );
                QueryAction::Forward(bytes.to_vec())
            }
        }
    }

    /// A response from a server on `flow`, and the addresses of it that got no identity (see
    /// [`crate::learner`]: they stay unreachable through `toFQDNs`).
    pub fn on_response(
        &mut self,
        flow: Flow,
        bytes: &[u8],
        now: Instant,
    ) -> (ResponseAction, Vec<IdentityError>) {
        let msg = match Message::from_vec(bytes) {
            Ok(m) if m.metadata.message_type == MessageType::Response => m,
            Ok(_) => {
                let reason = DropReason::Malformed("a query, not a response".into());
                return (ResponseAction::Drop(reason), Vec::new());
            }
            Err(e) => {
                let reason = DropReason::Malformed(e.to_string());
                return (ResponseAction::Drop(reason), Vec::new());
            }
        };
        let key = (flow, msg.metadata.id);
        let asked = match (self.pending.get(&key), msg.queries.as_slice()) {
            (Some(p), [q]) => p.question == plexus_policy::fqdn::normalize(&q.name().to_ascii()),
            _ => false,
        };
        if !asked {
            return (ResponseAction::Drop(DropReason::Unsolicited), Vec::new());
        }
        self.pending.remove(&key);
        let outcome = self.learner.on_response(&msg, now);
        let (changes, errors) = (outcome.changes, outcome.errors);
        if changes.is_empty() {
            return (ResponseAction::Deliver(bytes.to_vec()), errors);
        }
        let id = HoldId(self.next_hold);
        self.next_hold += 1;
        self.held.insert(
            id,
            Held {
                flow,
                bytes: bytes.to_vec(),
                deadline: now + self.config.hold_max,
            },
        );
        (ResponseAction::Hold { id, changes }, errors)
    }

    /// The changes of a hold are applied: release its response (`None` when `poll` already
    /// did).
    pub fn applied(&mut self, id: HoldId) -> Option<Release> {
        self.held.remove(&id).map(|h| Release {
            flow: h.flow,
            bytes: h.bytes,
        })
    }

    /// Releases the holds past [`ProxyConfig::hold_max`] and forgets forwarded queries past
    /// [`ProxyConfig::query_timeout`]; returns the released responses.
    pub fn poll(&mut self, now: Instant) -> Vec<Release> {
        self.pending.retain(|_, p| p.deadline > now);
        let due: Vec<HoldId> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.applied(id)).collect()
    }

    /// When [`Self::poll`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.deadline)
            .chain(self.held.values().map(|h| h.deadline))
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::answer::FqdnSelectors;
    use crate::cache::CacheConfig;
    use crate::identity::IdentityChange;
    use hickory_proto::op::{OpCode, Query as Question, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use plexus_policy::{
        EndpointInfo, IdentityChange as SelectorChange, PolicyConfig, PolicyRepository,
        parse_documents,
    };

    const C1: u32 = 65536;
    const DNS_ID: NumericIdentity = NumericIdentity(C1 + 53);
    const BASE: u32 = (1 << 24) + 0x8000;

    use crate::testing::{CLIENT_DNS_POLICY as POLICY, pod_labels as labels};

    fn proxy() -> DnsProxy {
        let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
        repo.upsert_all(parse_documents(POLICY, "default").unwrap());
        let client = labels("client", "default");
        repo.update_identities([
            SelectorChange::Upsert(NumericIdentity(C1 + 1), client.clone()),
            SelectorChange::Upsert(DNS_ID, labels("kube-dns", "kube-system")),
        ]);
        let info = EndpointInfo {
            labels: client,
            named_ports: Default::default(),
        };
        let mut learner = Learner::new(CacheConfig::default(), BASE..=BASE + 10);
        learner.set_selectors(FqdnSelectors::new(["*.example.test"]));
        let mut p = DnsProxy::new(ProxyConfig::default(), learner);
        p.rules
            .set(EndpointId(1), repo.resolve(&info), repo.resolve_dns(&info));
        p
    }

    fn flow() -> Flow {
        Flow {
            endpoint: EndpointId(1),
            client: "10.1.0.5:40000".parse().unwrap(),
            server: "10.96.0.10:53".parse().unwrap(),
            server_identity: DNS_ID,
            proto: Proto::Udp,
        }
    }

    fn query(id: u16, name: &str) -> Message {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Question::query(
            Name::from_ascii(name).unwrap(),
            RecordType::A,
        ));
        m
    }

    fn answer(q: &Message, ips: &[&str]) -> Vec<u8> {
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.queries = q.queries.clone();
        for ip in ips {
            m.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                30,
                RData::A(A(ip.parse().unwrap())),
            ));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn allowed_queries_are_forwarded_and_their_answers_held_until_applied() {
        let t0 = Instant::now();
        let mut p = proxy();
        let q = query(7, "www.example.test.");
        let bytes = q.to_vec().unwrap();
        assert_eq!(
            p.on_query(flow(), &bytes, t0),
            QueryAction::Forward(bytes.clone())
        );
        assert_eq!(p.pending(), 1);
        let resp = answer(&q, &["192.0.2.1"]);
        let ResponseAction::Hold { id, changes } = p.on_response(flow(), &resp, t0).0 else {
            panic!("a new address is held");
        };
        assert!(matches!(
            changes[0],
            Change::Identity(IdentityChange::Allocated { .. })
        ));
        assert_eq!((p.pending(), p.held()), (0, 1));
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(
            p.applied(id),
            Some(Release {
                flow: flow(),
                bytes: resp.clone()
            })
        );
        assert_eq!(p.applied(id), None);
        // The same answer again changes nothing: delivered at once.
        p.on_query(flow(), &bytes, t0);
        assert_eq!(
            p.on_response(flow(), &resp, t0).0,
            ResponseAction::Deliver(resp)
        );
    }

    #[test]
    fn refused_names_get_refused_at_once() {
        let mut p = proxy();
        let q = query(8, "evil.org.");
        let QueryAction::Reply { bytes, reason } =
            p.on_query(flow(), &q.to_vec().unwrap(), Instant::now())
        else {
            panic!("refused");
        };
        assert_eq!(reason, RefuseReason::NameNotAllowed);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (8, ResponseCode::Refused)
        );
        assert_eq!(p.pending(), 0);
        assert!(matches!(
            p.on_query(flow(), b"junk", Instant::now()),
            QueryAction::Drop(MessageError::Decode(_))
        ));
    }

    #[test]
    fn unsolicited_answers_are_dropped() {
        let t0 = Instant::now();
        let mut p = proxy();
        let q = query(9, "www.example.test.");
        // Never asked.
        let resp = answer(&q, &["192.0.2.66"]);
        assert_eq!(
            p.on_response(flow(), &resp, t0).0,
            ResponseAction::Drop(DropReason::Unsolicited)
        );
        p.on_query(flow(), &q.to_vec().unwrap(), t0);
        // Another question under the same id, or another flow.
        let other = answer(&query(9, "api.example.test."), &["192.0.2.66"]);
        assert_eq!(
            p.on_response(flow(), &other, t0).0,
            ResponseAction::Drop(DropReason::Unsolicited)
        );
        let mut elsewhere = flow();
        elsewhere.client = "10.1.0.6:40000".parse().unwrap();
        assert_eq!(
            p.on_response(elsewhere, &resp, t0).0,
            ResponseAction::Drop(DropReason::Unsolicited)
        );
        assert!(p.learner().cache().is_empty());
        // After the timeout the query is forgotten.
        p.poll(t0 + Duration::from_secs(10));
        assert_eq!(p.pending(), 0);
        assert_eq!(
            p.on_response(flow(), &resp, t0).0,
            ResponseAction::Drop(DropReason::Unsolicited)
        );
    }

    #[test]
    fn holds_are_released_after_the_maximum_delay() {
        let t0 = Instant::now();
        let mut p = proxy();
        let q = query(10, "www.example.test.");
        p.on_query(flow(), &q.to_vec().unwrap(), t0);
        let resp = answer(&q, &["192.0.2.1"]);
        let ResponseAction::Hold { id, .. } = p.on_response(flow(), &resp, t0).0 else {
            panic!("held");
        };
        assert!(p.poll(t0 + Duration::from_millis(99)).is_empty());
        let released = p.poll(t0 + Duration::from_millis(100));
        assert_eq!(
            released,
            vec![Release {
                flow: flow(),
                bytes: resp
            }]
        );
        assert_eq!(p.applied(id), None, "already released");
        assert_eq!(p.next_deadline(), None);
    }
}
