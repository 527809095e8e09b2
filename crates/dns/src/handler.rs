//! The DNS answers of the cluster domain, as a hickory [`RequestHandler`].
//!
//! [`ClusterDns`] is authoritative for the cluster domain only (the lab has no upstream to
//! forward to). For one question of class IN it answers:
//! - `A` (or `ANY`) of a service name: the service's ClusterIP, TTL [`ClusterDns::ttl`];
//! - any other type of a name that exists (`AAAA` of a service, `A` of a namespace name):
//!   NOERROR with no answer and the zone's SOA in the authority section (negative caching);
//! - `SOA` of the domain itself: the SOA;
//! - a name inside the domain that does not exist: NXDOMAIN with the SOA;
//! - a name outside the domain, another class: REFUSED;
//! - before the service table has synced: SERVFAIL (a "does not exist" could be wrong);
//! - not a standard query, or not exactly one question: NOTIMP / FORMERR.
//!
//! [`ClusterDns::respond`] is the whole decision without any I/O, so it is tested directly.

use std::net::Ipv4Addr;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::records::{Answer, DomainError};
use crate::watch::SharedRecords;

/// The default TTL of answers, in seconds: short, because services come and go.
pub const DEFAULT_TTL: u32 = 5;

/// A decided response: code, answers, authority records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The response code.
    pub code: ResponseCode,
    /// Whether the answer comes from our own zone (the AA bit).
    pub authoritative: bool,
    /// Answer records.
    pub answers: Vec<Record>,
    /// Authority records (the SOA of negative answers).
    pub authorities: Vec<Record>,
}

impl Response {
    /// A response with only a code.
    pub fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: vec![],
            authorities: vec![],
        }
    }
}

/// The cluster DNS server's request handler.
#[derive(Clone)]
pub struct ClusterDns {
    records: SharedRecords,
    origin: Name,
    soa: Record,
    ttl: u32,
}

impl ClusterDns {
    /// A handler answering from `records` with TTL `ttl` seconds.
    pub fn new(records: SharedRecords, ttl: u32) -> Result<Self, DomainError> {
        let domain = records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .domain()
            .to_string();
        let name = |n: &str| {
            Name::from_ascii(format!("{n}.")).map_err(|_| DomainError {
                domain: domain.clone(),
                reason: "not a DNS name",
            })
        };
        let origin = name(&domain)?;
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                name(&format!("ns.dns.{domain}"))?,
                name(&format!("hostmaster.{domain}"))?,
                1,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        Ok(Self {
            records,
            origin,
            soa,
            ttl,
        })
    }

    /// The TTL of answers, in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    fn negative(&self, code: ResponseCode) -> Response {
        Response {
            code,
            authoritative: true,
            answers: vec![],
            authorities: vec![self.soa.clone()],
        }
    }

    /// The response to one question.
    pub fn respond(&self, name: &Name, qtype: RecordType, class: DNSClass) -> Response {
        let records = self
            .records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = name.to_ascii();
        if class != DNSClass::IN || !records.in_zone(&text) {
            return Response::code(ResponseCode::Refused);
        }
        if !records.synced() {
            return Response::code(ResponseCode::ServFail);
        }
        let answer = records.resolve(&text);
        drop(records);
        match (answer, qtype) {
            (Answer::Address(ip), RecordType::A | RecordType::ANY) => Response {
                code: ResponseCode::NoError,
                authoritative: true,
                answers: vec![self.a_record(name, ip)],
                authorities: vec![],
            },
            (Answer::NoData, RecordType::SOA | RecordType::ANY) if name == &self.origin => {
                Response {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: vec![self.soa.clone()],
                    authorities: vec![],
                }
            }
            (Answer::Address(_) | Answer::NoData, _) => self.negative(ResponseCode::NoError),
            (Answer::NxDomain, _) => self.negative(ResponseCode::NXDomain),
            (Answer::NotInZone, _) => Response::code(ResponseCode::Refused),
        }
    }

    fn a_record(&self, name: &Name, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)))
    }
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        send_response(request, response_handle, |name, qtype, class| {
            self.respond(name, qtype, class)
        })
        .await
    }
}

/// Answers one request with what `decide` says about its question (FORMERR for anything but
/// one question of a query, NOTIMP for another opcode), with an OPT record when the request
/// had one; shared by every handler of this crate.
pub(crate) async fn send_response<R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
    decide: impl FnOnce(&Name, RecordType, DNSClass) -> Response,
) -> ResponseInfo {
    let response_edns = request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().max(512));
        edns.set_version(0);
        edns
    });
    let decided = if request.metadata.message_type != MessageType::Query {
        Response::code(ResponseCode::FormErr)
    } else if request.metadata.op_code != OpCode::Query {
        Response::code(ResponseCode::NotImp)
    } else {
        match request.queries.queries() {
            [q] => {
                let original = q.original();
                decide(
                    original.name(),
                    original.query_type(),
                    original.query_class(),
                )
            }
            _ => Response::code(ResponseCode::FormErr),
        }
    };
    tracing::debug!(
        src = %request.src(),
        question = ?request.queries.queries().first().map(|q| q.original().to_string()),
        code = %decided.code,
        answers = decided.answers.len(),
        "query"
    );
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = decided.code;
    metadata.authoritative = decided.authoritative;
    let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
    let response = builder.build(
        metadata,
        decided.answers.iter(),
        decided.authorities.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(err) => {
            tracing::warn!(src = %request.src(), error = %err, "cannot send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, RwLock};

    use plexus_loadbalancer::service::{Metadata as SvcMeta, Service, ServiceSpec};

    use super::*;
    use crate::records::ServiceRecords;

    fn handler(synced: bool) -> ClusterDns {
        let mut r = ServiceRecords::new("cluster.local").unwrap();
        r.upsert(&Service {
            metadata: SvcMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                cluster_ip: Some("10.11.0.5".into()),
                ..Default::default()
            },
        });
        if synced {
            r.set_synced();
        }
        ClusterDns::new(Arc::new(RwLock::new(r)), DEFAULT_TTL).unwrap()
    }

    fn ask(h: &ClusterDns, name: &str, t: RecordType) -> Response {
        h.respond(&Name::from_ascii(name).unwrap(), t, DNSClass::IN)
    }

    #[test]
    fn a_queries_of_services_get_the_cluster_ip_with_a_short_ttl() {
        let h = handler(true);
        let r = ask(&h, "Web.Default.svc.cluster.local.", RecordType::A);
        assert_eq!(r.code, ResponseCode::NoError);
        assert!(r.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 5);
        assert_eq!(r.answers[0].data, RData::A(A("10.11.0.5".parse().unwrap())));
        // The answer repeats the name as asked.
        assert_eq!(
            r.answers[0].name.to_ascii(),
            "Web.Default.svc.cluster.local."
        );
    }

    #[test]
    fn other_types_of_known_names_are_nodata_and_unknown_names_nxdomain() {
        let h = handler(true);
        let r = ask(&h, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(r.code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        let r = ask(&h, "db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        let r = ask(&h, "cluster.local.", RecordType::SOA);
        assert_eq!(r.code, ResponseCode::NoError);
        assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn names_outside_the_domain_and_other_classes_are_refused() {
        let h = handler(true);
        assert_eq!(
            ask(&h, "example.com.", RecordType::A).code,
            ResponseCode::Refused
        );
        let r = h.respond(
            &Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
            DNSClass::CH,
        );
        assert_eq!(r.code, ResponseCode::Refused);
    }

    #[test]
    fn nothing_is_said_to_be_missing_before_the_services_synced() {
        let h = handler(false);
        assert_eq!(
            ask(&h, "db.default.svc.cluster.local.", RecordType::A).code,
            ResponseCode::ServFail
        );
    }
}
