//! Option negotiation: blksize (RFC 2348), tsize and timeout (RFC 2349), windowsize (RFC 7440).
//! Options the server does not know, or values out of range, are left out of the OACK (which
//! the RFCs define as refusing them); a request with no accepted option gets plain DATA.

use std::time::Duration;

/// RFC 1350's block size, used when the client asks for nothing else.
pub const DEFAULT_BLOCK_SIZE: usize = 512;
/// RFC 2348's largest block size (fits a 65535-byte UDP datagram over IPv4).
pub const LARGEST_BLOCK_SIZE: usize = 65464;

/// The server's limits on what clients may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_block_size: usize,
    pub max_window_size: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_size: LARGEST_BLOCK_SIZE,
            // Large windows only help on fast links; 64 blocks is plenty and bounds bursts.
            max_window_size: 64,
            default_timeout: Duration::from_secs(1),
        }
    }
}

/// What one transfer runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub block_size: usize,
    pub window_size: u16,
    pub timeout: Duration,
    /// The options to confirm in an OACK; empty: send DATA straight away.
    pub accepted: Vec<(&'static str, String)>,
}

const KNOWN_OPTIONS: [&str; 4] = ["blksize", "tsize", "timeout", "windowsize"];

/// Decides the transfer's parameters from the client's options and the file's size.
pub fn negotiate(requested: &[(String, String)], file_size: u64, limits: &Limits) -> Negotiated {
    let mut negotiated = Negotiated {
        block_size: DEFAULT_BLOCK_SIZE,
        window_size: 1,
        timeout: limits.default_timeout,
        accepted: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::with_capacity(KNOWN_OPTIONS.len());
    for (name, value) in requested {
        // A repeated option counts once, the first time: confirming it twice in the OACK, with
        // the transfer using the last value, left the client guessing (found by
        // tests/it/fuzz.rs). Only the few known names are remembered, so a request packed with
        // thousands of options costs no more than reading it.
        if KNOWN_OPTIONS.contains(&name.as_str()) {
            if seen.contains(&name.as_str()) {
                continue;
            }
            seen.push(name);
        }
        let Ok(number) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if number >= 8 => {
                let size = (number as usize)
                    .min(limits.max_block_size)
                    .min(LARGEST_BLOCK_SIZE);
                negotiated.block_size = size;
                negotiated.accepted.push(("blksize", size.to_string()));
            }
            // A read request carries tsize 0; the reply is the file's size.
            "tsize" => negotiated.accepted.push(("tsize", file_size.to_string())),
            "timeout" if (1..=255).contains(&number) => {
                negotiated.timeout = Duration::from_secs(number);
                negotiated.accepted.push(("timeout", number.to_string()));
            }
            "windowsize" if (1..=65535).contains(&number) => {
                let size = (number as u16).min(limits.max_window_size.max(1));
                negotiated.window_size = size;
                negotiated.accepted.push(("windowsize", size.to_string()));
            }
            _ => {}
        }
    }
    negotiated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn no_options_means_rfc1350_defaults_and_no_oack() {
        let negotiated = negotiate(&[], 10, &Limits::default());
        assert_eq!(negotiated.block_size, 512);
        assert_eq!(negotiated.window_size, 1);
        assert!(negotiated.accepted.is_empty());
    }

    #[test]
    fn firmware_options_are_answered() {
        let requested = options(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]);
        let negotiated = negotiate(&requested, 1_048_576, &Limits::default());
        assert_eq!(negotiated.block_size, 1468);
        assert_eq!(negotiated.window_size, 4);
        assert_eq!(
            negotiated.accepted,
            vec![
                ("tsize", "1048576".to_string()),
                ("blksize", "1468".to_string()),
                ("windowsize", "4".to_string())
            ]
        );
    }

    #[test]
    fn a_repeated_option_is_confirmed_once_with_the_value_used() {
        let requested = options(&[
            ("timeout", "1"),
            ("blksize", "1468"),
            ("timeout", "8"),
            ("blksize", "512"),
        ]);
        let negotiated = negotiate(&requested, 0, &Limits::default());
        assert_eq!(negotiated.timeout, Duration::from_secs(1));
        assert_eq!(negotiated.block_size, 1468);
        assert_eq!(
            negotiated.accepted,
            vec![
                ("timeout", "1".to_string()),
                ("blksize", "1468".to_string())
            ]
        );
    }

    #[test]
    fn out_of_range_values_are_clamped_or_refused() {
        let limits = Limits {
            max_block_size: 1432,
            max_window_size: 16,
            ..Limits::default()
        };
        let requested = options(&[
            ("blksize", "65464"),
            ("windowsize", "1000"),
            ("timeout", "0"),
            ("color", "blue"),
        ]);
        let negotiated = negotiate(&requested, 0, &limits);
        assert_eq!(negotiated.block_size, 1432);
        assert_eq!(negotiated.window_size, 16);
        assert_eq!(negotiated.timeout, Duration::from_secs(1));
        assert_eq!(negotiated.accepted.len(), 2);
        assert!(negotiate(&options(&[("blksize", "7")]), 0, &limits)
            .accepted
            .is_empty());
        assert!(negotiate(&options(&[("blksize", "x")]), 0, &limits)
            .accepted
            .is_empty());
    }
}
