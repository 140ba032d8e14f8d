//! `netmux firewall add|insert|ls|rm|flush`: the admin firewall of an instance, as ipfilter
//! rules on illumos vnd. Rules are `pass|block in|out [quick] [on CLIENT] EXPR` in the
//! pcap-filter language; the driver applies them to received frames before delivery and to
//! transmitted frames after the client's own transmit check (the evaluation is described in
//! `netmux_driver::daemon::firewall`). Clients cannot see or change them. netd keeps them in
//! its configuration file unless `--temporary`. Root and netd's admin uids only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use netmux_client::blocking::Client;
use netmux_client::{ClientError, ConnectOptions};
use netmux_proto::ops::{FirewallRequest, RuleText, RuleView};

use super::{Refused, Run};

/// The admin firewall: rules the driver applies to every client's frames.
#[derive(Debug, Args)]
#[command(after_help = "A rule: pass|block in|out [quick] [on CLIENT] EXPR
  in   received frames, before they reach a client (after reassembly: a rule sees whole
       datagrams; a VLAN-tagged frame is also tried without its tags)
  out  transmitted frames, after the client's own transmit check; a blocked one completes
       with the reason `firewall` (TxStatus::RejectedByFirewall)
  The last matching rule decides, unless a quick rule matches first; no match passes.
  CLIENT is a pid, session:ID or a port (udp/7007), resolved to its queue when the rule is
  added; after the client ends (or netd restarts) the rule matches nothing (`dormant`).

Examples:
  netmux firewall add block in quick udp port 7007
  netmux firewall add block out on tcp/8080 dst net 198.51.100.0/24
  netmux firewall insert 1 pass in quick udp port 7007 and src host 192.0.2.99
  netmux firewall ls
  netmux firewall rm 2
  netmux firewall flush

Exit status: 0 done, 1 netd refused (not allowed, a bad rule, no such rule or client), 2 netd
not reachable or bad usage.")]
pub struct Firewall {
    #[command(subcommand)]
    action: Action,
    /// The instance whose rules these are [default: the default instance].
    #[arg(long, short = 'i', value_name = "NAME", global = true)]
    instance: Option<String>,
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR", global = true)]
    runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Add a rule at the end: pass|block in|out [quick] [on CLIENT] EXPR.
    Add {
        /// Forget it when netd stops (otherwise netd keeps it in its --config file).
        #[arg(long)]
        temporary: bool,
        /// The rule.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        rule: Vec<String>,
    },
    /// Insert a rule before rule N (from 1; N one past the last adds at the end).
    Insert {
        /// Its position.
        n: usize,
        /// Forget it when netd stops.
        #[arg(long)]
        temporary: bool,
        /// The rule.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        rule: Vec<String>,
    },
    /// List the rules in order with the frames and bytes each decided.
    Ls {
        /// One JSON object per rule, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove rule N.
    Rm {
        /// Its position, from 1.
        n: usize,
    },
    /// Remove every rule of the instance.
    Flush,
}

impl Run for Firewall {
    fn run(self) -> anyhow::Result<ExitCode> {
        let dir = self
            .runtime_dir
            .clone()
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let options = ConnectOptions {
            instance: self.instance.clone(),
            ..ConnectOptions::default()
        };
        let mut client = Client::connect_with(&dir, &options).map_err(refusal)?;
        let (request, json) = match self.action {
            Action::Add { temporary, rule } => (
                FirewallRequest::Add {
                    rule: parse_rule(&rule)?,
                    at: None,
                    temporary,
                },
                false,
            ),
            Action::Insert { n, temporary, rule } => (
                FirewallRequest::Add {
                    rule: parse_rule(&rule)?,
                    at: Some(n),
                    temporary,
                },
                false,
            ),
            Action::Ls { json } => (FirewallRequest::List, json),
            Action::Rm { n } => (FirewallRequest::Remove { at: n }, false),
            Action::Flush => (FirewallRequest::Flush, false),
        };
        let listing = matches!(request, FirewallRequest::List);
        let rules = client.firewall(request).map_err(refusal)?;
        if listing {
            let text = if json {
                json_lines(&rules)
            } else {
                table(&rules)
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing the rules")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The rule in `words`, or why it is not one (exit status 1).
fn parse_rule(words: &[String]) -> anyhow::Result<RuleText> {
    words
        .join(" ")
        .parse::<RuleText>()
        .map_err(|e| Refused(e.to_string()).into())
}

/// netd's refusal as exit status 1, anything else as 2.
fn refusal(e: ClientError) -> anyhow::Error {
    match e.refusal() {
        Some(r) => anyhow::Error::new(Refused(r.message.clone())),
        None => anyhow::Error::new(e).context("talking to netd"),
    }
}

/// The rules as a table for people.
fn table(rules: &[RuleView]) -> String {
    let mut out = format!("{:>3} {:>10} {:>12}  RULE\n", "N", "FRAMES", "BYTES");
    for r in rules {
        let mut notes = Vec::new();
        if r.temporary {
            notes.push("temporary");
        }
        if r.dormant {
            notes.push("dormant: its client is gone");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join(", "))
        };
        out.push_str(&format!(
            "{:>3} {:>10} {:>12}  {}{notes}\n",
            r.number, r.frames, r.bytes, r.rule
        ));
    }
    out
}

/// One JSON object per rule, one per line.
fn json_lines(rules: &[RuleView]) -> String {
    rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "number": r.number,
                "rule": r.rule.to_string(),
                "frames": r.frames,
                "bytes": r.bytes,
                "temporary": r.temporary,
                "dormant": r.dormant,
            })
            .to_string()
                + "\n"
        })
        .collect()
}
