//! The operator's requests to netd: `netmux capture`, `netmux firewall`, `netmux get/set`,
//! and how they name a client (by pid, session or port). What netd then asks of the driver
//! is in [`crate::driver::ops`].

use serde::{Deserialize, Serialize};

use super::Transport;
use crate::driver::ops::{CaptureDirections, RuleAction, RuleDirection};

/// How an operator names a client: by process id, by netd's session id, or by a port it
/// holds (`udp/7007`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientName {
    /// A process id (`4082`, or `pid:4082`).
    Pid(u32),
    /// netd's session id (`session:7`).
    Session(u64),
    /// The session holding this port (`udp/7007`, `tcp/8080`).
    Port(Transport, u16),
}

impl std::fmt::Display for ClientName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientName::Pid(pid) => write!(f, "pid:{pid}"),
            ClientName::Session(id) => write!(f, "session:{id}"),
            ClientName::Port(t, p) => write!(f, "{t}/{p}"),
        }
    }
}

/// Why a client's name could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} names no client: write a pid (4082), session:ID or a port (udp/7007, tcp/8080)")]
pub struct BadClientName(pub String);

impl std::str::FromStr for ClientName {
    type Err = BadClientName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadClientName(text.to_owned());
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        if let Some((kind, rest)) = text.split_once('/') {
            let transport = match kind {
                "udp" => Transport::Udp,
                "tcp" => Transport::Tcp,
                _ => return Err(bad()),
            };
            let port = number(rest)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0)
                .ok_or_else(bad)?;
            return Ok(ClientName::Port(transport, port));
        }
        if let Some(rest) = text.strip_prefix("session:") {
            return number(rest).map(ClientName::Session).ok_or_else(bad);
        }
        let pid = text.strip_prefix("pid:").unwrap_or(text);
        number(pid)
            .and_then(|p| u32::try_from(p).ok())
            .map(ClientName::Pid)
            .ok_or_else(bad)
    }
}

/// What `netmux capture` asks netd for: the asking session's queue becomes a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// The client to capture, in the session's instance; `None` for the whole link.
    pub client: Option<ClientName>,
    /// Which way.
    pub directions: CaptureDirections,
    /// Bytes of each frame kept (the record says the frame's whole length).
    pub snaplen: u32,
    /// A pcap-filter expression a frame must match to be copied (empty: every frame).
    pub expr: String,
}

/// A firewall rule as an operator writes it: `pass|block in|out [quick] [on CLIENT] EXPR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleText {
    /// Pass or block.
    pub action: RuleAction,
    /// In or out.
    pub direction: RuleDirection,
    /// Whether a match decides at once (else the last matching rule decides).
    pub quick: bool,
    /// Only the frames of this client (resolved to its queue when the rule is added).
    pub on: Option<ClientName>,
    /// The pcap-filter expression (empty: every frame).
    pub expr: String,
}

/// Why a rule's text could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRule {
    /// It does not begin with `pass` or `block`.
    #[error("a rule begins with pass or block, not {0:?}")]
    Action(String),
    /// `in` or `out` is missing.
    #[error("pass or block is followed by in or out, not {0:?}")]
    Direction(String),
    /// `on` without a client, or with a bad one.
    #[error("on: {0}")]
    On(String),
}

impl std::str::FromStr for RuleText {
    type Err = BadRule;

    /// `block in quick on udp/7007 udp port 7007`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut words = text.split_whitespace().peekable();
        let action = match words.next() {
            Some("pass") => RuleAction::Pass,
            Some("block") => RuleAction::Block,
            other => return Err(BadRule::Action(other.unwrap_or("").to_owned())),
        };
        let direction = match words.next() {
            Some("in") => RuleDirection::In,
            Some("out") => RuleDirection::Out,
            other => return Err(BadRule::Direction(other.unwrap_or("").to_owned())),
        };
        let quick = words.next_if_eq(&"quick").is_some();
        let on = match words.next_if_eq(&"on") {
            Some(_) => {
                let name = words
                    .next()
                    .ok_or_else(|| BadRule::On("a client follows on".to_owned()))?;
                Some(
                    name.parse::<ClientName>()
                        .map_err(|e| BadRule::On(e.to_string()))?,
                )
            }
            None => None,
        };
        let expr = words.collect::<Vec<_>>().join(" ");
        Ok(RuleText {
            action,
            direction,
            quick,
            on,
            expr,
        })
    }
}

impl std::fmt::Display for RuleText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.action {
            RuleAction::Pass => "pass",
            RuleAction::Block => "block",
        })?;
        f.write_str(match self.direction {
            RuleDirection::In => " in",
            RuleDirection::Out => " out",
        })?;
        if self.quick {
            f.write_str(" quick")?;
        }
        if let Some(on) = &self.on {
            write!(f, " on {on}")?;
        }
        if !self.expr.is_empty() {
            write!(f, " {}", self.expr)?;
        }
        Ok(())
    }
}

/// What `netmux firewall` asks netd (root and netd's admin uids only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirewallRequest {
    /// Adds a rule at the end (`add`) or at a position, counting from 1 (`insert`).
    Add {
        /// The rule.
        rule: RuleText,
        /// Where; the end when `None`.
        at: Option<usize>,
        /// Whether it is forgotten when netd stops.
        temporary: bool,
    },
    /// Removes the rule at this position (from 1).
    Remove {
        /// Its position.
        at: usize,
    },
    /// Removes every rule.
    Flush,
    /// The rules and their counters.
    List,
}

/// One rule as `netmux firewall ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// Its position, from 1.
    pub number: usize,
    /// The rule.
    pub rule: RuleText,
    /// Whether it is forgotten when netd stops.
    pub temporary: bool,
    /// Whether its client is not there (an `on` rule whose client ended matches nothing).
    pub dormant: bool,
    /// Frames it decided.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What `netmux get` and `netmux set` ask netd about a client's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyRequest {
    /// The client.
    pub client: ClientName,
    /// `PROP=VALUE` pairs to set, in order (none for `get`).
    pub set: Vec<String>,
}

/// One property of a client's queue, as `netmux get` shows it (illumos `vndadm get`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyView {
    /// Its name (`rxbuf`, `txbuf`, `maxsize`, `mintu`, `maxtu`, or a netd setting such as
    /// `limits.ring_bytes_per_uid`).
    pub name: String,
    /// Whether a privileged user may change it here.
    pub writable: bool,
    /// Its value.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_named_by_pid_session_or_port() {
        assert_eq!("4082".parse(), Ok(ClientName::Pid(4082)));
        assert_eq!("pid:4082".parse(), Ok(ClientName::Pid(4082)));
        assert_eq!("session:7".parse(), Ok(ClientName::Session(7)));
        assert_eq!(
            "udp/7007".parse(),
            Ok(ClientName::Port(Transport::Udp, 7007))
        );
        assert_eq!(
            "tcp/8080".parse(),
            Ok(ClientName::Port(Transport::Tcp, 8080))
        );
        for bad in [
            "",
            "udp/",
            "udp/0",
            "udp/70000",
            "sctp/1",
            "-1",
            "pid:",
            "x",
            "1e3",
        ] {
            assert!(bad.parse::<ClientName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_reads_and_prints_back_the_same() {
        let r: RuleText = "block in quick on udp/7007 udp port 7007".parse().unwrap();
        assert_eq!(r.action, RuleAction::Block);
        assert_eq!(r.direction, RuleDirection::In);
        assert!(r.quick);
        assert_eq!(r.on, Some(ClientName::Port(Transport::Udp, 7007)));
        assert_eq!(r.expr, "udp port 7007");
        assert_eq!(r.to_string(), "block in quick on udp/7007 udp port 7007");
        let all: RuleText = "pass out".parse().unwrap();
        assert_eq!(all.expr, "");
        assert!("drop in x".parse::<RuleText>().is_err());
        assert!("block sideways".parse::<RuleText>().is_err());
        assert!("block in on".parse::<RuleText>().is_err());
    }
}
