//! An authoritative server for one zone read from a zone file (the lab's "outside" DNS).
//!
//! [`Zone`] parses an RFC 1035 master file (hickory's parser: `$ORIGIN`, `$TTL`, relative
//! names, `A`, `AAAA`, `CNAME`, `NS`, `SOA`, `TXT` ...) for one origin, and answers one
//! question ([`Zone::respond`]):
//! - records of the asked type at the name: NOERROR with them (AA set);
//! - a `CNAME` at the name (and another type asked): the CNAME, followed inside the zone
//!   (at most 8 steps), with the target's records of the asked type;
//! - the name exists with other types only (or has names below it): NOERROR, no answer, the
//!   SOA in the authority section; a name that does not exist: NXDOMAIN with the SOA;
//! - a name outside the zone, another class: REFUSED.
//!
//! Without an SOA in the file one is made up (`ns.<origin>`, negative TTL 30 s). No wildcards,
//! no delegations, no DNSSEC: enough to stand for "the internet" in tests.
//!
//! [`ZoneDns`] serves a zone file and re-reads it when it changes (checked on each query, by
//! modification time, size and inode, so a test that rewrites or replaces the file is answered
//! from the new one at its next query). A file that does not parse keeps the previous zone and
//! is logged, naming the file and the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{
    DNSClass, LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use crate::handler::{Response, send_response};

/// A zone file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The file could not be read.
    #[error("zone file {file}: {reason}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The file does not parse, or its records are not of the zone.
    #[error("zone file {file}: {reason}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// The most CNAMEs followed for one answer.
const MAX_CHAIN: usize = 8;

/// One zone's records.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: LowerName,
    soa: Record,
    records: BTreeMap<RrKey, RecordSet>,
}

impl Zone {
    /// Parses `text` (from `file`, for errors) as the zone `origin` (e.g. `example.test`).
    pub fn parse(text: &str, origin: &str, file: &str) -> Result<Self, ZoneError> {
        let err = |reason: String| ZoneError::Parse {
            file: file.to_string(),
            reason,
        };
        let origin_name = Name::from_ascii(format!("{}.", origin.trim_end_matches('.')))
            .map_err(|e| err(format!("origin {origin:?}: {e}")))?;
        let (_, records) = Parser::new(text, None, Some(origin_name.clone()))
            .parse()
            .map_err(|e| err(e.to_string()))?;
        let lower = LowerName::new(&origin_name);
        if let Some(key) = records.keys().find(|k| !lower.zone_of(&k.name)) {
            return Err(err(format!(
                "{} is not inside the zone {origin_name}",
                Name::from(key.name.clone())
            )));
        }
        let soa = records
            .get(&RrKey::new(lower.clone(), RecordType::SOA))
            .and_then(|s| s.records_without_rrsigs().next().cloned())
            .unwrap_or_else(|| made_up_soa(&origin_name));
        Ok(Self {
            origin: lower,
            soa,
            records,
        })
    }

    /// Reads and parses a zone file.
    pub fn load(path: &Path, origin: &str) -> Result<Self, ZoneError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ZoneError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, origin, &file)
    }

    fn set(&self, name: &LowerName, rtype: RecordType) -> Option<&RecordSet> {
        self.records.get(&RrKey::new(name.clone(), rtype))
    }

    fn exists(&self, name: &LowerName) -> bool {
        self.records.keys().any(|k| name.zone_of(&k.name))
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
        let asked = LowerName::new(name);
        if class != DNSClass::IN || !self.origin.zone_of(&asked) {
            return Response {
                code: ResponseCode::Refused,
                authoritative: false,
                answers: vec![],
                authorities: vec![],
            };
        }
        let mut answers: Vec<Record> = Vec::new();
        let mut current = asked.clone();
        for _ in 0..MAX_CHAIN {
            if let Some(set) = self.set(&current, qtype) {
                answers.extend(set.records_without_rrsigs().cloned());
                break;
            }
            if qtype == RecordType::CNAME {
                break;
            }
            let Some(cname) = self
                .set(&current, RecordType::CNAME)
                .and_then(|s| s.records_without_rrsigs().next())
            else {
                break;
            };
            answers.push(cname.clone());
            let RData::CNAME(target) = &cname.data else {
                break;
            };
            current = LowerName::new(&target.0);
            if !self.origin.zone_of(&current) {
                break;
            }
        }
        if !answers.is_empty() {
            return Response {
                code: ResponseCode::NoError,
                authoritative: true,
                answers,
                authorities: vec![],
            };
        }
        if self.exists(&asked) {
            self.negative(ResponseCode::NoError)
        } else {
            self.negative(ResponseCode::NXDomain)
        }
    }
}

fn made_up_soa(origin: &Name) -> Record {
    let ns = Name::from_ascii("ns")
        .and_then(|n| n.append_domain(origin))
        .unwrap_or_else(|_| origin.clone());
    let mbox = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(origin))
        .unwrap_or_else(|_| origin.clone());
    Record::from_rdata(
        origin.clone(),
        30,
        RData::SOA(SOA::new(ns, mbox, 1, 7200, 1800, 86400, 30)),
    )
}

/// What identifies a version of the file.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// A request handler serving a zone file, re-read when it changes.
#[derive(Clone)]
pub struct ZoneDns {
    path: PathBuf,
    origin: String,
    current: Arc<Mutex<(Stamp, Arc<Zone>)>>,
}

impl ZoneDns {
    /// Serves `path` as the zone `origin`; the file must parse now.
    pub fn load(path: &Path, origin: &str) -> Result<Self, ZoneError> {
        let before = stamp(path);
        let zone = Zone::load(path, origin)?;
        Ok(Self {
            path: path.to_path_buf(),
            origin: origin.to_string(),
            current: Arc::new(Mutex::new((before, Arc::new(zone)))),
        })
    }

    /// The zone as the file says now (re-read if it changed and parses).
    pub fn zone(&self) -> Arc<Zone> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = stamp(&self.path);
        if now != current.0 {
            match Zone::load(&self.path, &self.origin) {
                Ok(zone) => {
                    tracing::info!(file = %self.path.display(), "zone file re-read");
                    *current = (now, Arc::new(zone));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the previous zone");
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let zone = self.zone();
        send_response(request, response_handle, |name, qtype, class| {
            zone.respond(name, qtype, class)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_server::proto::rr::rdata::A;

    const ZONE: &str = "\
$TTL 30
@      IN SOA ns hostmaster 1 7200 1800 86400 10
@      IN NS  ns
ns     IN A   172.31.254.1
s1     IN A   172.31.254.11
s1     IN A   172.31.254.12
www 60 IN CNAME s1
ext    IN CNAME www.other.test.
a.b    IN A   172.31.254.13
";

    fn zone() -> Zone {
        Zone::parse(ZONE, "example.test", "example.test.zone").unwrap()
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Response {
        z.respond(&Name::from_ascii(name).unwrap(), t, DNSClass::IN)
    }

    fn a(r: &Record) -> String {
        match &r.data {
            RData::A(A(ip)) => ip.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_records_and_cname_chains() {
        let z = zone();
        let r = ask(&z, "S1.Example.Test.", RecordType::A);
        assert_eq!((r.code, r.authoritative), (ResponseCode::NoError, true));
        let ips: Vec<String> = r.answers.iter().map(a).collect();
        assert_eq!(ips, ["172.31.254.11", "172.31.254.12"]);
        assert_eq!(r.answers[0].ttl, 30);
        let r = ask(&z, "www.example.test.", RecordType::A);
        assert_eq!(r.answers.len(), 3);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(r.answers[0].ttl, 60);
        assert_eq!(a(&r.answers[1]), "172.31.254.11");
        // A CNAME out of the zone: the CNAME alone.
        let r = ask(&z, "ext.example.test.", RecordType::A);
        assert_eq!((r.code, r.answers.len()), (ResponseCode::NoError, 1));
    }

    #[test]
    fn negative_answers_and_refusals() {
        let z = zone();
        let r = ask(&z, "s1.example.test.", RecordType::AAAA);
        assert_eq!(r.code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(
            ask(&z, "b.example.test.", RecordType::A).code,
            ResponseCode::NoError,
            "an empty non-terminal exists"
        );
        let r = ask(&z, "nope.example.test.", RecordType::A);
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(
            ask(&z, "example.org.", RecordType::A).code,
            ResponseCode::Refused
        );
        assert_eq!(
            ask(&z, "example.test.", RecordType::SOA).answers[0].record_type(),
            RecordType::SOA
        );
    }

    #[test]
    fn bad_files_name_the_file_and_a_soa_is_made_up() {
        let e = Zone::parse("www IN A not-an-address\n", "example.test", "z.zone").unwrap_err();
        assert!(e.to_string().starts_with("zone file z.zone: "), "{e}");
        let e = Zone::parse(
            "$TTL 5\nwww.other.test. IN A 1.2.3.4\n",
            "example.test",
            "z.zone",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("www.other.test. is not inside the zone example.test."),
            "{e}"
        );
        let z = Zone::parse("$TTL 5\nwww IN A 1.2.3.4\n", "example.test", "z.zone").unwrap();
        let r = ask(&z, "x.example.test.", RecordType::A);
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn the_server_follows_rewrites_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.test.zone");
        std::fs::write(&path, "$TTL 5\nwww IN A 172.31.254.11\n").unwrap();
        let dns = ZoneDns::load(&path, "example.test").unwrap();
        let www = |d: &ZoneDns| {
            let r = ask(&d.zone(), "www.example.test.", RecordType::A);
            r.answers.iter().map(a).collect::<Vec<_>>()
        };
        assert_eq!(www(&dns), ["172.31.254.11"]);
        // Replaced (a new inode), as a test rewriting it through a temporary file does.
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, "$TTL 5\nwww IN A 172.31.254.12\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(www(&dns), ["172.31.254.12"]);
        // A broken file keeps the previous zone.
        std::fs::write(&path, "www IN A nope\n").unwrap();
        assert_eq!(www(&dns), ["172.31.254.12"]);
        assert!(ZoneDns::load(&dir.path().join("missing"), "example.test").is_err());
    }
}
