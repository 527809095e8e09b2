//! CIDR peers: parsing, and subtraction of `except` prefixes.
//!
//! A `fromCIDRSet`/`toCIDRSet`/`ipBlock` with `except` resolves to the list of prefixes that
//! cover the CIDR minus its exceptions, so the datapath needs only an allow (or deny) LPM
//! lookup and never an "except" concept.

use std::net::IpAddr;

use plexus_model::cidr::Cidr;

use crate::error::{FieldError, field_err};

/// Parses `a.b.c.d/n` (host bits are cleared) or a bare address (a host prefix).
pub fn parse_cidr(text: &str, field: &str) -> Result<Cidr, FieldError> {
    if text.contains('/') {
        text.parse::<Cidr>()
            .map(|c| c.network())
            .map_err(|e| field_err(field, e.to_string()))
    } else {
        text.parse::<IpAddr>()
            .map(Cidr::host)
            .map_err(|_| field_err(field, format!("{text:?} is not a CIDR or an IP address")))
    }
}

fn max_len(c: &Cidr) -> u8 {
    if c.addr.is_ipv4() { 32 } else { 128 }
}

/// Whether `outer` contains all of `inner`.
pub fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    outer.addr.is_ipv4() == inner.addr.is_ipv4()
        && outer.prefix_len <= inner.prefix_len
        && outer.contains(inner.addr)
}

fn halves(c: &Cidr) -> [Cidr; 2] {
    let len = c.prefix_len + 1;
    let bit = u32::from(max_len(c) - len);
    let right = match c.addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) | (1u32 << bit)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) | (1u128 << bit)).into()),
    };
    [
        Cidr {
            addr: c.addr,
            prefix_len: len,
        },
        Cidr {
            addr: right,
            prefix_len: len,
        },
    ]
}

/// The prefixes covering `prefix` minus every prefix of `excepts`, in address order.
pub fn subtract(prefix: Cidr, excepts: &[Cidr]) -> Vec<Cidr> {
    let prefix = prefix.network();
    let mut out = Vec::new();
    let mut stack = vec![prefix];
    while let Some(p) = stack.pop() {
        if excepts.iter().any(|e| covers(e, &p)) {
            continue;
        }
        if !excepts.iter().any(|e| covers(&p, e)) || p.prefix_len == max_len(&p) {
            out.push(p);
            continue;
        }
        let [left, right] = halves(&p);
        stack.push(right);
        stack.push(left);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn subtraction_covers_exactly_the_cidr_minus_excepts(
            len in 8u8..20,
            excepts in prop::collection::vec((any::<u32>(), 12u8..32), 0..5),
            probes in prop::collection::vec(any::<u32>(), 50),
        ) {
            let base = Cidr::new("10.0.0.0".parse().unwrap(), len).unwrap();
            let excepts: Vec<Cidr> = excepts
                .into_iter()
                .map(|(bits, l)| {
                    let addr = std::net::Ipv4Addr::from(0x0a00_0000 | (bits >> 8));
                    Cidr::new(IpAddr::V4(addr), l.max(len)).unwrap().network()
                })
                .collect();
            let parts = subtract(base, &excepts);
            for (i, a) in parts.iter().enumerate() {
                for b in &parts[i + 1..] {
                    prop_assert!(!covers(a, b) && !covers(b, a), "{} overlaps {}", a, b);
                }
            }
            for bits in probes {
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | (bits >> 8)));
                let expected = base.contains(ip) && !excepts.iter().any(|e| e.contains(ip));
                prop_assert_eq!(parts.iter().any(|p| p.contains(ip)), expected, "{}", ip);
            }
        }
    }

    fn c(s: &str) -> Cidr {
        parse_cidr(s, "f").unwrap()
    }

    #[test]
    fn except_subtraction() {
        assert_eq!(subtract(c("10.0.0.0/8"), &[]), vec![c("10.0.0.0/8")]);
        assert_eq!(
            subtract(c("10.0.0.0/30"), &[c("10.0.0.1/32")]),
            vec![c("10.0.0.0/32"), c("10.0.0.2/31")]
        );
        assert!(subtract(c("10.0.0.0/24"), &[c("10.0.0.0/16")]).is_empty());
        let parts = subtract(c("0.0.0.0/0"), &[c("10.0.0.0/8"), c("192.168.0.0/16")]);
        assert_eq!(parts.len(), 7 + 15);
        assert!(parts.iter().all(|p| !covers(p, &c("10.1.2.3"))));
        assert!(parts.iter().any(|p| covers(p, &c("11.0.0.1"))));
        assert_eq!(c("10.1.2.3/24"), c("10.1.2.0/24"));
        assert_eq!(c("10.1.2.3").prefix_len, 32);
        assert_eq!(
            subtract(c("fd00::/126"), &[c("fd00::3")]),
            vec![c("fd00::/127"), c("fd00::2/128")]
        );
        assert!(parse_cidr("10.0.0.0/33", "f").is_err());
        assert!(parse_cidr("nope", "f").is_err());
    }
}
