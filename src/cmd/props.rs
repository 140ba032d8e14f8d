//! `netmux get` and `netmux set`: a client's queue properties, as illumos `vndadm get/set`
//! shows a vnd datalink's: `rxbuf` (bytes of received frames that may wait unread; a frame
//! that would exceed it is dropped for that client only and counted as `rx-full`), `txbuf`
//! (bytes of transmitted frames the client may have waiting in its tx ring; a write that would
//! exceed it waits or is refused whole with "would block", never dropped), `maxsize`, `mintu`,
//! `maxtu` (read-only), then netd's limits (settings of its configuration
//! file, read-only here). Output is `LINK PROPERTY PERM VALUE` as vndadm prints it, `-p` for
//! scripts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, ConnectOptions};
use netmux_proto::ops::{ClientName, PropertyRequest, PropertyView};

use super::{Refused, Run};

/// Show a client's queue properties: rxbuf, txbuf, maxsize, mintu, maxtu, and netd's limits.
#[derive(Args, Debug)]
#[command(
    after_help = "CLIENT is a pid, session:ID or a port (udp/7007, tcp/8080).\n\n\
                  PERM is what root and netd's admins may do: rw (rxbuf, txbuf) or r- (the \
                  rest; maxsize is the queue's rx ring, the limits are netd's configuration \
                  file).\n\nExamples:\n  netmux get tcp/8080\n  netmux get -p udp/7007 rxbuf \
                  maxsize\n\nExit status: 0 shown, 1 netd refused (no such client or \
                  property), 2 netd not reachable or bad usage."
)]
pub struct Get {
    /// The client.
    client: ClientName,
    /// Only these properties.
    properties: Vec<String>,
    /// `link:property:perm:value` lines for scripts.
    #[arg(short = 'p', long)]
    parseable: bool,
    /// The separator with -p.
    #[arg(
        short = 'd',
        value_name = "DELIM",
        default_value = ":",
        requires = "parseable"
    )]
    delimiter: String,
    #[command(flatten)]
    netd: Netd,
}

/// Set a client's queue property: rxbuf=SIZE or txbuf=SIZE (bytes, or K, M, G; 1024-based,
/// optional B).
#[derive(Args, Debug)]
#[command(
    after_help = "SIZE is checked against [maxtu, maxsize] (rxbuf) or [maxtu, the tx \
                  ring] (txbuf) and kept in whole ring slots (rounded up). A frame that would \
                  make the unread frames exceed rxbuf is dropped for that client only and \
                  counted (rx-full in netmux stat -v). A write that would make the client's \
                  waiting transmitted frames exceed txbuf is flow control: the client waits, \
                  or is told \"would block\" and nothing of the batch is written (txfc in \
                  netmux stat); it is never dropped. Root and netd's admin uids only.\n\n\
                  Examples:\n  netmux set tcp/8080 rxbuf=64K\n  netmux set pid:4082 \
                  txbuf=32K\n\nExit status: 0 set, 1 netd \
                  refused (read-only or unknown property, a size out of range, not allowed), \
                  2 netd not reachable or bad usage."
)]
pub struct Set {
    /// The client.
    client: ClientName,
    /// PROP=VALUE, one or more (applied one at a time, in order).
    #[arg(required = true, value_name = "PROP=VALUE")]
    assignments: Vec<String>,
    #[command(flatten)]
    netd: Netd,
}

/// Which netd to ask.
#[derive(Args, Debug)]
struct Netd {
    /// The instance the client is in [default: the default instance].
    #[arg(long, short = 'i', value_name = "NAME")]
    instance: Option<String>,
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

impl Netd {
    fn client(&self) -> anyhow::Result<Client> {
        let dir = self
            .runtime_dir
            .clone()
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let options = ConnectOptions {
            instance: self.instance.clone(),
            ..ConnectOptions::default()
        };
        Client::connect_with(&dir, &options).map_err(refusal)
    }
}

impl Run for Get {
    fn run(self) -> anyhow::Result<ExitCode> {
        let view = self
            .netd
            .client()?
            .properties(PropertyRequest {
                client: self.client,
                set: Vec::new(),
            })
            .map_err(refusal)?;
        if let Some(unknown) = self
            .properties
            .iter()
            .find(|p| !view.iter().any(|v| &v.name == *p))
        {
            return Err(Refused(format!("unknown property: {unknown}")).into());
        }
        let shown: Vec<&PropertyView> = view
            .iter()
            .filter(|v| self.properties.is_empty() || self.properties.contains(&v.name))
            .collect();
        let link = self.client.to_string();
        let mut out = String::new();
        if !self.parseable {
            out.push_str(&format!(
                "{:<13} {:<28} {:<5} {}\n",
                "LINK", "PROPERTY", "PERM", "VALUE"
            ));
        }
        for v in shown {
            let perm = if v.writable { "rw" } else { "r-" };
            if self.parseable {
                let d = &self.delimiter;
                out.push_str(&format!("{link}{d}{}{d}{perm}{d}{}\n", v.name, v.value));
            } else {
                out.push_str(&format!(
                    "{link:<13} {:<28} {perm:<5} {}\n",
                    v.name, v.value
                ));
            }
        }
        std::io::stdout()
            .write_all(out.as_bytes())
            .context("writing the properties")?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Run for Set {
    fn run(self) -> anyhow::Result<ExitCode> {
        let mut client = self.netd.client()?;
        for assignment in &self.assignments {
            client
                .properties(PropertyRequest {
                    client: self.client,
                    set: vec![assignment.clone()],
                })
                .map_err(refusal)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// netd's refusal as exit status 1, anything else as 2.
fn refusal(e: ClientError) -> anyhow::Error {
    match e.refusal() {
        Some(r) => anyhow::Error::new(Refused(r.message.clone())),
        None if e.nobody_listens() => anyhow::anyhow!("{e} (is netd running?)"),
        None => anyhow::Error::new(e).context("talking to netd"),
    }
}
