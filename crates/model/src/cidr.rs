//! IP prefixes, and their JSON forms as Go's `net.IPNet` writes them.
//!
//! Cilium writes a CIDR as `{"IP":"10.244.1.0","Mask":"////AA=="}` (the mask as base64 bytes),
//! and an absent one as `null`. Readers also accept the string form `"10.244.1.0/24"`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address (host bits may be set; see [`Cidr::network`]).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

fn addr_err(what: &'static str, value: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Address {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl Cidr {
    /// Builds a prefix, checking the length.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, ModelError> {
        if prefix_len > max_len(addr) {
            return Err(addr_err(
                "CIDR",
                &format!("{addr}/{prefix_len}"),
                "prefix length too long",
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    /// The host prefix of one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix_len: max_len(addr),
        }
    }

    /// Whether this is a host prefix.
    pub fn is_host(&self) -> bool {
        self.prefix_len == max_len(self.addr)
    }

    fn mask_bits(&self) -> u128 {
        let bits = u32::from(max_len(self.addr));
        let len = u32::from(self.prefix_len);
        if len == 0 {
            0
        } else {
            (u128::MAX << (128 - len)) >> (128 - bits)
        }
    }

    fn addr_bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The prefix with host bits cleared.
    pub fn network(&self) -> Self {
        let bits = Self::addr_bits(self.addr) & self.mask_bits();
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Self {
            addr,
            prefix_len: self.prefix_len,
        }
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && Self::addr_bits(ip) & self.mask_bits()
                == Self::addr_bits(self.addr) & self.mask_bits()
    }

    /// The mask as bytes (4 or 16).
    pub fn mask_bytes(&self) -> Vec<u8> {
        let bits = self.mask_bits();
        match self.addr {
            IpAddr::V4(_) => (bits as u32).to_be_bytes().to_vec(),
            IpAddr::V6(_) => bits.to_be_bytes().to_vec(),
        }
    }

    /// The mask as Go writes a `net.IPMask` in JSON: base64 of its bytes.
    pub fn mask_base64(&self) -> String {
        BASE64.encode(self.mask_bytes())
    }
}

/// Parses a base64 mask (4 or 16 bytes, contiguous ones) into a prefix length for `addr`.
pub fn prefix_len_from_mask(addr: IpAddr, mask_b64: &str) -> Result<u8, ModelError> {
    let bytes = BASE64
        .decode(mask_b64)
        .map_err(|e| addr_err("mask", mask_b64, format!("not base64: {e}")))?;
    let expected = if addr.is_ipv4() { 4 } else { 16 };
    if bytes.len() != expected {
        return Err(addr_err(
            "mask",
            mask_b64,
            format!("{} bytes for an address that needs {expected}", bytes.len()),
        ));
    }
    let ones: u32 = bytes.iter().map(|b| b.count_ones()).sum();
    let contiguous = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .skip(ones as usize)
        .all(|bit| bit == 0);
    if !contiguous {
        return Err(addr_err("mask", mask_b64, "ones are not contiguous"));
    }
    Ok(ones as u8)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| addr_err("CIDR", s, "expected <ip>/<length>"))?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| addr_err("CIDR", s, format!("{ip:?} is not an IP address")))?;
        let len: u8 = len
            .parse()
            .map_err(|_| addr_err("CIDR", s, format!("{len:?} is not a prefix length")))?;
        Self::new(addr, len).map_err(|_| addr_err("CIDR", s, "prefix length too long"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        IpNetJson {
            ip: self.addr.to_string(),
            mask: self.mask_base64(),
        }
        .serialize(s)
    }
}

#[derive(Serialize, Deserialize)]
struct IpNetJson {
    #[serde(rename = "IP")]
    ip: String,
    #[serde(rename = "Mask")]
    mask: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CidrForm {
    Text(String),
    Object(IpNetJson),
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match CidrForm::deserialize(d).map_err(|_| {
            D::Error::custom("expected a CIDR as {\"IP\",\"Mask\"} or \"a.b.c.d/n\"")
        })? {
            CidrForm::Text(s) => s.parse().map_err(D::Error::custom),
            CidrForm::Object(o) => {
                let addr: IpAddr = o
                    .ip
                    .parse()
                    .map_err(|_| D::Error::custom(addr_err("IP", &o.ip, "not an IP address")))?;
                let len = prefix_len_from_mask(addr, &o.mask).map_err(D::Error::custom)?;
                Ok(Cidr {
                    addr,
                    prefix_len: len,
                })
            }
        }
    }
}

/// serde helper: a list of CIDRs written as `null` when empty (Go's nil slice).
pub mod nullable_vec {
    use super::*;

    /// Serializes an empty list as `null`.
    pub fn serialize<S: Serializer>(v: &[Cidr], s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            v.serialize(s)
        }
    }

    /// Accepts `null` or a list.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
        Ok(Option::<Vec<Cidr>>::deserialize(d)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_object_form_and_string_form() {
        let c: Cidr = serde_json::from_str(r#"{"IP":"10.244.1.0","Mask":"////AA=="}"#).unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"IP":"10.244.1.0","Mask":"////AA=="}"#
        );
        let s: Cidr = serde_json::from_str(r#""10.244.1.0/24""#).unwrap();
        assert_eq!(s, c);
        let v6: Cidr = "fd00::/64".parse().unwrap();
        let back: Cidr = serde_json::from_str(&serde_json::to_string(&v6).unwrap()).unwrap();
        assert_eq!(back, v6);
    }

    #[test]
    fn bad_masks_and_addresses() {
        let e = serde_json::from_str::<Cidr>(r#"{"IP":"10.0.0.0","Mask":"/w/AAA=="}"#).unwrap_err();
        assert!(e.to_string().contains("not contiguous"), "{e}");
        let e = serde_json::from_str::<Cidr>(r#"{"IP":"10.0.0.0","Mask":"%%%"}"#).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e =
            serde_json::from_str::<Cidr>(r#"{"IP":"10.0.0.0","Mask":"////////////////////AA=="}"#)
                .unwrap_err();
        assert!(e.to_string().contains("needs 4"), "{e}");
        let e =
            serde_json::from_str::<Cidr>(r#"{"IP":"10.0.0.300","Mask":"////AA=="}"#).unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!(serde_json::from_str::<Cidr>("42").is_err());
    }

    #[test]
    fn contains_and_network() {
        let c: Cidr = "10.10.1.7/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.10.1.0/24");
        assert!(c.contains("10.10.1.200".parse().unwrap()));
        assert!(!c.contains("10.10.2.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::host("10.0.0.1".parse().unwrap()).is_host());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    proptest! {
        #[test]
        fn v4_round_trips(a in any::<u32>(), len in 0u8..=32) {
            let c = Cidr::new(IpAddr::V4(a.into()), len).unwrap().network();
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), c);
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }
    }
}
