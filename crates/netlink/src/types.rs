//! The small value types the operations take: an IPv4 prefix and a MAC address, both parsed
//! from and printed in the form `ip` uses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::NetlinkError;

/// An IPv4 prefix (`10.0.1.0/24`; a bare address means `/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// A prefix; `None` when `prefix_len` exceeds 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then_some(Self { addr, prefix_len })
    }

    /// The /32 prefix of one address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    /// The default route's prefix, `0.0.0.0/0`.
    pub const DEFAULT: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetlinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NetlinkError::Parse {
            what: "IPv4 prefix",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|e| err(&e.to_string()))?),
            None => (s, 32),
        };
        let addr = addr
            .parse()
            .map_err(|e: std::net::AddrParseError| err(&e.to_string()))?;
        Self::new(addr, len).ok_or_else(|| err("prefix length above 32"))
    }
}

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetlinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NetlinkError::Parse {
            what: "MAC address",
            value: s.to_string(),
            reason: "expected six hex bytes separated by colons".to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print_as_ip_does() {
        let p: Ipv4Cidr = "10.0.1.0/24".parse().unwrap();
        assert_eq!(p, Ipv4Cidr::new(Ipv4Addr::new(10, 0, 1, 0), 24).unwrap());
        assert_eq!(p.to_string(), "10.0.1.0/24");
        let h: Ipv4Cidr = "10.0.0.5".parse().unwrap();
        assert_eq!(h, Ipv4Cidr::host(Ipv4Addr::new(10, 0, 0, 5)));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/"] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn macs_parse_and_print_lower_case() {
        let m: MacAddr = "0A:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:5g",
            "0a:1b:2c:3d:4e:555",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("MAC address"), "{err}");
        }
    }
}
