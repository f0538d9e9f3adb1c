//! Counting established TCP connections to a unit from the host's own
//! `/proc/net/tcp` and `/proc/net/tcp6` (drain mode "host"): reading two
//! kernel files needs nothing on the host but a shell and `cat`, unlike `ss`
//! or `netstat`, which minimal images lack.
//!
//! The kernel prints each address as 32-bit words in the host's byte order;
//! this parser reads them as little-endian, which every host changeover is
//! meant for is (x86-64, arm64).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The command that prints what [`count_established`] parses.
pub const PROC_NET_TCP: &str = "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true";

/// The kernel's state number for ESTABLISHED.
const ESTABLISHED: &str = "01";

/// Established connections whose local end is `port`, on any local address
/// (as `ss state established '( sport = :port )'` counts them), or only on
/// `only` when given (`drain.local_address`: a host with several service
/// addresses, or test hosts sharing one network stack).
pub fn count_established(proc_text: &str, port: u16, only: Option<IpAddr>) -> Result<u64, String> {
    let only = only.map(canonical);
    let mut count = 0;
    let mut rows = 0;
    for line in proc_text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Header lines ("sl local_address ...") and anything short.
        if fields.len() < 4 || !fields[0].ends_with(':') {
            continue;
        }
        let Some((ip, local_port)) = parse_endpoint(fields[1]) else {
            return Err(format!(
                "unexpected line in /proc/net/tcp: `{}`",
                line.trim()
            ));
        };
        rows += 1;
        if local_port == port && fields[3] == ESTABLISHED && only.is_none_or(|o| o == canonical(ip))
        {
            count += 1;
        }
    }
    // An empty answer means the files were not there (not Linux, or /proc
    // hidden): saying "0 connections" then would cut users off.
    if rows == 0 && !proc_text.contains("local_address") {
        return Err(
            "the host printed no /proc/net/tcp table (is it Linux with /proc mounted?)".into(),
        );
    }
    Ok(count)
}

/// `0100007F:1F90` or the 32-hex-digit IPv6 form.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?.to_le_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4]
                    .copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

fn word(hex: &str) -> Option<u32> {
    u32::from_str_radix(hex, 16).ok()
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket
/// shows) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines from Linux 6.x: a listener on 127.0.1.3:8081 (0A), two
    // established connections to it, one to 127.0.1.4:8081, a loopback one,
    // and a dual-stack (tcp6) connection to 127.0.1.3:8081.
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0301007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0301007F:1F91 0100007F:B3A2 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0301007F:1F91 0100007F:B3A4 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0401007F:1F91 0100007F:B3A6 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:1F91 0100007F:B3A8 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
   5: 0301007F:1F91 0100007F:B3AA 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000301007F:1F91 0000000000000000FFFF00000100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 1006 1 0000000000000000 20 4 30 10 -1
";

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn counts_every_local_address_by_default() {
        // Rows 1-4 and the tcp6 row; not the listener, not TIME_WAIT, not
        // another port.
        assert_eq!(count_established(TCP, 8081, None), Ok(5));
        assert_eq!(count_established(TCP, 8082, None), Ok(0));
    }

    #[test]
    fn local_address_narrows_to_one_address() {
        // Rows 1, 2 and the dual-stack row (IPv4-mapped) are 127.0.1.3's.
        assert_eq!(count_established(TCP, 8081, ip("127.0.1.3")), Ok(3));
        assert_eq!(count_established(TCP, 8081, ip("127.0.1.4")), Ok(1));
        assert_eq!(count_established(TCP, 8081, ip("::ffff:127.0.1.3")), Ok(3));
        assert_eq!(count_established(TCP, 8081, ip("10.0.0.5")), Ok(0));
    }

    #[test]
    fn no_table_is_an_error_not_zero() {
        assert!(count_established("", 8081, None).is_err());
        assert!(count_established("   0: garbage 01", 8081, None).is_err());
        // A table with no rows is a real zero.
        let header = TCP.lines().next().unwrap();
        assert_eq!(count_established(header, 8081, None), Ok(0));
    }
}
