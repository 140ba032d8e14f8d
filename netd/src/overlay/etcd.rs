//! The `etcd` mapping backend (`--mapping etcd:URL[,URL]`, the `etcd` feature): an overlay's
//! mappings live in etcd v3 under `/netmux/overlay/<vni>/<mac>`, each value the fields of
//! one files-plugin entry (`{"ip": "192.0.2.2", "port": 4789, "arp": "10.0.0.2"}`), so the
//! `files` and `etcd` backends share one schema.
//!
//! Every netd writes its own instances' entries (their MAC -> this host's underlay address
//! and the overlay's VXLAN port, `arp` their IPv4 address) under a lease it keeps alive
//! (and deletes one only while it is still under that lease: a MAC that moved to another
//! host keeps that host's entry), so
//! a host that dies takes its mappings with it when the lease expires
//! ([`crate::config::Config::overlay_lease_ttl`]); a netd that stops revokes its lease. It
//! lists the prefix, then watches it from the next revision: every change reaches netd's
//! cache (and the driver's, flushed) within one poll. A watch canceled because its revision
//! was compacted is not resumed at that revision (it cannot be, and retrying it forever was
//! flannel's 7.7 GB-a-day log bug): the prefix is listed again and watched from the new
//! revision. A lost connection makes the overlay degraded (its cached mappings stay in use)
//! until netd reconnects, grants a new lease, writes its entries again and lists again, on
//! its own, with a backoff of up to [`MAX_BACKOFF`].
//!
//! The client runs on a thread of its own with its own small runtime, so etcd's latency
//! never holds netd's state lock; it talks to [`super::OverlayService`] through channels:
//! [`Event`]s to netd (drained every poll), [`Command`]s from it.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchResponse,
};
use netmux_proto::overlay::MappingChange;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::files::{self, Entry, Mapping};
use super::ChangeError;

/// Where every overlay's keys live: `/netmux/overlay/<vni>/<mac>`.
pub const PREFIX: &str = "/netmux/overlay/";
/// The longest wait between two attempts to reach etcd.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one etcd request may take before the connection counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dropping a backend waits for its lease to be revoked (it holds netd's state
/// lock meanwhile); past that the thread finishes on its own.
const REVOKE_WAIT: Duration = Duration::from_millis(500);

/// What the backend tells netd.
#[derive(Debug)]
pub enum Event {
    /// The whole mapping, as listed (after connecting and after a compaction).
    Snapshot(Mapping),
    /// A MAC's entry was put.
    Put([u8; 6], Entry),
    /// A MAC's entry was deleted (or its lease expired).
    Delete([u8; 6]),
    /// etcd cannot be reached (or refused): why. The overlay is degraded.
    Down(String),
}

/// What netd asks of the backend.
#[derive(Debug)]
pub enum Command {
    /// This host's own entries now: put under the lease, the others this host wrote deleted.
    Own(BTreeMap<[u8; 6], Entry>),
    /// `netmux overlay map set|rm`: an entry written without a lease (kept until removed),
    /// or a key deleted; the result goes back.
    Change(MappingChange, oneshot::Sender<Result<(), ChangeError>>),
}

/// The key of `mac` in overlay `vni`.
pub fn key(vni: u32, mac: [u8; 6]) -> String {
    format!("{PREFIX}{vni}/{}", crate::instance::mac_text(mac))
}

/// An entry's value: the files plugin's fields for one MAC.
pub fn value(e: &Entry) -> String {
    let mut m = Mapping::new();
    m.insert([2, 0, 0, 0, 0, 0], *e);
    let text = files::render(&m);
    // `{\n  "02:00:00:00:00:00": { ... }\n}\n` -> `{ ... }`
    text.split_once(": ")
        .map(|(_, rest)| rest.trim_end().trim_end_matches('}').trim_end().to_owned())
        .unwrap_or_default()
}

/// Parses a key and value of overlay `vni`'s prefix; `Err` says what is wrong.
pub fn parse_kv(vni: u32, key: &[u8], value: &[u8]) -> Result<([u8; 6], Entry), String> {
    let key = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8".to_owned())?;
    let mac_text = key
        .strip_prefix(&format!("{PREFIX}{vni}/"))
        .ok_or_else(|| format!("{key}: not under {PREFIX}{vni}/"))?;
    let mac = files::parse_mac(mac_text).ok_or_else(|| format!("{key}: not a MAC"))?;
    let value = std::str::from_utf8(value).map_err(|_| format!("{key}: not UTF-8"))?;
    let doc = format!("{{\"{}\": {value}}}", crate::instance::mac_text(mac));
    let mapping = files::parse(&doc).map_err(|e| format!("{key}: {}", e.what))?;
    mapping
        .into_iter()
        .next()
        .ok_or_else(|| format!("{key}: no entry"))
}

/// The endpoints of `etcd:URL[,URL]` (after `etcd:`): each `http://host:port` (a bare
/// `host:port` is taken as `http://`). TLS is not supported.
pub fn parse_endpoints(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for url in text.split(',') {
        let url = url.trim();
        if url.is_empty() {
            return Err("an empty etcd URL".into());
        }
        if url.starts_with("https://") {
            return Err(format!("{url}: TLS to etcd is not supported; use http://"));
        }
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: give host:port, e.g. http://127.0.0.1:2379"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{url}: give host:port, e.g. http://127.0.0.1:2379"));
        }
        out.push(format!("http://{rest}"));
    }
    Ok(out)
}

/// The backend of one overlay: its thread and the channels to it. Dropping it stops the
/// thread, which revokes the lease (this host's entries go at once), waiting at most
/// [`REVOKE_WAIT`] for it.
#[derive(Debug)]
pub struct EtcdBackend {
    /// The endpoints, as given.
    pub endpoints: Vec<String>,
    events: mpsc::Receiver<Event>,
    commands: tmpsc::UnboundedSender<Command>,
    stop: Option<oneshot::Sender<()>>,
    /// Closed when the thread ends.
    done: mpsc::Receiver<()>,
    /// The own entries last sent.
    own: Option<BTreeMap<[u8; 6], Entry>>,
}

impl EtcdBackend {
    /// Starts the client for overlay `vni` (named `name` in the logs) with a lease of `ttl`.
    pub fn start(
        name: &str,
        vni: u32,
        endpoints: Vec<String>,
        ttl: Duration,
    ) -> std::io::Result<EtcdBackend> {
        let (event_tx, events) = mpsc::channel();
        let (commands, command_rx) = tmpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let task = Task {
            name: name.to_owned(),
            vni,
            endpoints: endpoints.clone(),
            ttl: ttl.as_secs().max(1) as i64,
            events: event_tx,
            commands: command_rx,
            own: BTreeMap::new(),
            written: Default::default(),
            connected: false,
            client: None,
        };
        std::thread::Builder::new()
            .name(format!("etcd-{name}"))
            .spawn(move || {
                let _done = done_tx;
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = task.events.send(Event::Down(format!("no runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(task.run(stop_rx));
            })?;
        Ok(EtcdBackend {
            endpoints,
            events,
            commands,
            stop: Some(stop),
            done,
            own: None,
        })
    }

    /// Every event since the last call.
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Tells the backend this host's own entries, when they changed since the last call.
    pub fn publish(&mut self, own: BTreeMap<[u8; 6], Entry>) {
        if self.own.as_ref() != Some(&own) {
            self.own = Some(own.clone());
            let _ = self.commands.send(Command::Own(own));
        }
    }

    /// Sends a change; the receiver gets its result.
    pub fn change(&self, change: MappingChange) -> oneshot::Receiver<Result<(), ChangeError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(tmpsc::error::SendError(Command::Change(_, tx))) =
            self.commands.send(Command::Change(change, tx))
        {
            let _ = tx.send(Err(ChangeError::Backend(
                "the etcd client has stopped".into(),
            )));
        }
        rx
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.done.recv_timeout(REVOKE_WAIT);
    }
}

/// The client's side. See the module documentation.
struct Task {
    name: String,
    vni: u32,
    endpoints: Vec<String>,
    ttl: i64,
    events: mpsc::Sender<Event>,
    commands: tmpsc::UnboundedReceiver<Command>,
    /// This host's entries, as netd last said.
    own: BTreeMap<[u8; 6], Entry>,
    /// The own entries written under the current lease.
    written: BTreeMap<[u8; 6], Entry>,
    /// A session got as far as watching (the backoff starts again from its shortest).
    connected: bool,
    /// The current session's client (for revoking its lease at the end).
    client: Option<Client>,
}

/// Why a session with etcd ended.
enum End {
    /// netd stops (or dropped the backend).
    Stop,
    /// The connection failed: why.
    Lost(String),
}

fn lost(what: &str) -> impl FnOnce(etcd_client::Error) -> End + '_ {
    move |e| End::Lost(format!("{what}: {e}"))
}

impl Task {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        let mut down: Option<String> = None;
        loop {
            let mut lease = None;
            let ended = tokio::select! {
                e = self.session(&mut lease, &mut down) => e,
                _ = &mut stop => End::Stop,
            };
            match ended {
                End::Stop => {
                    if let (Some(id), Some(mut c)) = (lease, self.client.take()) {
                        // Best effort: a netd that stops takes its entries away at once.
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, c.lease_revoke(id)).await;
                    }
                    return;
                }
                End::Lost(why) => {
                    if std::mem::take(&mut self.connected) {
                        backoff = Duration::from_millis(100);
                    }
                    if down.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            overlay = %self.name,
                            "etcd unreachable, keeping the cached mappings: {why}"
                        );
                        let _ = self.events.send(Event::Down(why.clone()));
                        down = Some(why);
                    }
                    self.written.clear();
                    // Meanwhile changes are refused at once, with the reason.
                    let wake = tokio::time::sleep(backoff);
                    tokio::pin!(wake);
                    loop {
                        tokio::select! {
                            _ = &mut wake => break,
                            _ = &mut stop => return,
                            command = self.commands.recv() => match command {
                                None => return,
                                Some(Command::Own(own)) => self.own = own,
                                Some(Command::Change(_, reply)) => {
                                    let why = down.clone().unwrap_or_default();
                                    let _ = reply.send(Err(ChangeError::Backend(format!(
                                        "etcd unreachable: {why}"
                                    ))));
                                }
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection: lease, own entries, list, watch, until it fails or netd stops.
    async fn session(&mut self, lease: &mut Option<i64>, down: &mut Option<String>) -> End {
        let mut client = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&self.endpoints, Some(options())),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return End::Lost(format!("connecting: {e}")),
            Err(_) => return End::Lost("connecting: timed out".into()),
        };
        self.client = Some(client.clone());
        let id = match timed(client.lease_grant(self.ttl, None)).await {
            Ok(r) => r.id(),
            Err(e) => return e,
        };
        *lease = Some(id);
        let (mut keeper, mut keep_stream) = match timed(client.lease_keep_alive(id)).await {
            Ok(k) => k,
            Err(e) => return e,
        };
        let own = self.own.clone();
        if let Err(e) = self.write_own(&mut client, id, own).await {
            return e;
        }
        let mut watch = match self.list_and_watch(&mut client).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        if down.take().is_some() {
            tracing::info!(overlay = %self.name, "etcd reachable again");
        }
        self.connected = true;
        let prefix = format!("{PREFIX}{}/", self.vni);
        let mut tick =
            tokio::time::interval(Duration::from_millis((self.ttl as u64 * 1000 / 3).max(300)));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return End::Lost(format!("keeping the lease alive: {e}"));
                    }
                }
                kept = keep_stream.message() => match kept {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return End::Lost("the lease expired".into()),
                    Ok(None) => return End::Lost("the lease keep-alive stream ended".into()),
                    Err(e) => return End::Lost(format!("keeping the lease alive: {e}")),
                },
                message = watch.message() => match message {
                    Ok(Some(r)) => {
                        if r.canceled() || r.compact_revision() != 0 {
                            tracing::info!(
                                overlay = %self.name,
                                compacted = r.compact_revision(),
                                reason = r.cancel_reason(),
                                "etcd watch canceled: listing again"
                            );
                            watch = match self.list_and_watch(&mut client).await {
                                Ok(w) => w,
                                Err(e) => return e,
                            };
                            continue;
                        }
                        self.apply(&prefix, &r);
                    }
                    Ok(None) => return End::Lost("the watch ended".into()),
                    Err(e) => return End::Lost(format!("watching: {e}")),
                },
                command = self.commands.recv() => match command {
                    None => return End::Stop,
                    Some(Command::Own(own)) => {
                        self.own = own.clone();
                        if let Err(e) = self.write_own(&mut client, id, own).await {
                            return e;
                        }
                    }
                    Some(Command::Change(change, reply)) => {
                        let done = self.change(&mut client, &change).await;
                        let failed = match &done {
                            Err(ChangeError::Backend(why)) => Some(why.clone()),
                            _ => None,
                        };
                        let _ = reply.send(done);
                        if let Some(why) = failed {
                            return End::Lost(why);
                        }
                    }
                },
            }
        }
    }

    /// Puts the own entries that changed under the lease and deletes the ones gone.
    async fn write_own(
        &mut self,
        client: &mut Client,
        lease: i64,
        own: BTreeMap<[u8; 6], Entry>,
    ) -> Result<(), End> {
        for (mac, e) in &own {
            if self.written.get(mac) != Some(e) {
                timed(client.put(
                    key(self.vni, *mac),
                    value(e),
                    Some(PutOptions::new().with_lease(lease)),
                ))
                .await?;
                self.written.insert(*mac, *e);
                tracing::info!(overlay = %self.name, mac = %crate::instance::mac_text(*mac), ip = %e.ip, "mapping published in etcd");
            }
        }
        let gone: Vec<[u8; 6]> = self
            .written
            .keys()
            .filter(|m| !own.contains_key(*m))
            .copied()
            .collect();
        for mac in gone {
            // Only while the key is still under this host's lease: an instance that moved
            // to another host has its new entry there, under that host's lease.
            let k = key(self.vni, mac);
            timed(
                client.txn(
                    Txn::new()
                        .when([Compare::lease(k.clone(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(k, None)]),
                ),
            )
            .await?;
            self.written.remove(&mac);
        }
        Ok(())
    }

    /// Lists the prefix (a [`Event::Snapshot`]) and watches it from the next revision.
    async fn list_and_watch(
        &mut self,
        client: &mut Client,
    ) -> Result<etcd_client::WatchStream, End> {
        self.list_and_watch_retrying(client, 3).await
    }

    /// [`Task::list_and_watch`], listing again up to `retries` times when the new watch is
    /// refused because its revision was compacted meanwhile.
    async fn list_and_watch_retrying(
        &mut self,
        client: &mut Client,
        retries: u32,
    ) -> Result<etcd_client::WatchStream, End> {
        let prefix = format!("{PREFIX}{}/", self.vni);
        let listed =
            timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let mut mapping = Mapping::new();
        for kv in listed.kvs() {
            match parse_kv(self.vni, kv.key(), kv.value()) {
                Ok((mac, e)) => {
                    mapping.insert(mac, e);
                }
                Err(why) => tracing::warn!(overlay = %self.name, "etcd entry ignored: {why}"),
            }
        }
        tracing::info!(overlay = %self.name, entries = mapping.len(), revision, "etcd mappings listed");
        let _ = self.events.send(Event::Snapshot(mapping));
        let mut watch = timed(
            client.watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1)
                        .with_progress_notify(),
                ),
            ),
        )
        .await?;
        match timed(watch.message()).await? {
            Some(r) if r.created() && !r.canceled() => Ok(watch),
            // Compacted between the listing and the watch: list again (a new revision).
            Some(r) if r.compact_revision() != 0 && retries > 0 => {
                Box::pin(self.list_and_watch_retrying(client, retries - 1)).await
            }
            Some(r) => Err(End::Lost(format!("watch refused: {}", r.cancel_reason()))),
            None => Err(End::Lost("the watch ended at once".into())),
        }
    }

    /// Turns a watch response's events into [`Event`]s.
    fn apply(&self, prefix: &str, r: &WatchResponse) {
        for event in r.events() {
            let Some(kv) = event.kv() else { continue };
            let event = match event.event_type() {
                EventType::Put => match parse_kv(self.vni, kv.key(), kv.value()) {
                    Ok((mac, e)) => Event::Put(mac, e),
                    Err(why) => {
                        tracing::warn!(overlay = %self.name, "etcd entry ignored: {why}");
                        continue;
                    }
                },
                EventType::Delete => {
                    let mac = std::str::from_utf8(kv.key())
                        .ok()
                        .and_then(|k| k.strip_prefix(prefix))
                        .and_then(files::parse_mac);
                    match mac {
                        Some(mac) => Event::Delete(mac),
                        None => continue,
                    }
                }
            };
            let _ = self.events.send(event);
        }
    }

    /// `netmux overlay map set|rm` at etcd.
    async fn change(
        &mut self,
        client: &mut Client,
        change: &MappingChange,
    ) -> Result<(), ChangeError> {
        let failed = |e: End| match e {
            End::Lost(why) => ChangeError::Backend(why),
            End::Stop => ChangeError::Backend("netd is stopping".to_owned()),
        };
        match change {
            MappingChange::Set(m) => {
                let e = Entry {
                    ip: m.ip,
                    port: m.port,
                    arp: m.arp,
                    ndp: m.ndp,
                    dhcp_proxy: m.dhcp_proxy,
                };
                timed(client.put(key(self.vni, m.mac), value(&e), None))
                    .await
                    .map_err(failed)?;
            }
            MappingChange::Remove(mac) => {
                let deleted = timed(client.delete(key(self.vni, *mac), None))
                    .await
                    .map_err(failed)?;
                if deleted.deleted() == 0 {
                    return Err(ChangeError::NoEntry(crate::instance::mac_text(*mac)));
                }
            }
        }
        Ok(())
    }
}

/// Connection options: a short connect timeout and HTTP/2 keep-alives, so a dead etcd is
/// noticed within seconds even while nothing changes.
fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true)
}

/// `request` with [`REQUEST_TIMEOUT`]; any failure is a lost connection.
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, End> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(r) => r.map_err(lost("etcd")),
        Err(_) => Err(End::Lost("etcd: a request timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn keys_and_values_are_the_files_plugins_fields_and_parse_back() {
        let e = Entry {
            ip: Ipv4Addr::new(192, 0, 2, 2),
            port: Some(4789),
            arp: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ndp: None,
            dhcp_proxy: None,
        };
        let mac = [2, 0xb1, 0, 0, 0, 2];
        assert_eq!(key(42, mac), "/netmux/overlay/42/02:b1:00:00:00:02");
        let v = value(&e);
        assert_eq!(
            v,
            r#"{ "ip": "192.0.2.2", "port": 4789, "arp": "10.0.0.2" }"#
        );
        assert_eq!(
            parse_kv(42, key(42, mac).as_bytes(), v.as_bytes()),
            Ok((mac, e))
        );
        assert!(parse_kv(43, key(42, mac).as_bytes(), v.as_bytes()).is_err());
        let bad = parse_kv(42, key(42, mac).as_bytes(), br#"{"ip": "nowhere"}"#).unwrap_err();
        assert!(bad.contains("nowhere"), "{bad}");
    }

    #[test]
    fn endpoints_are_http_host_port() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379,127.0.0.2:2380"),
            Ok(vec![
                "http://127.0.0.1:2379".to_owned(),
                "http://127.0.0.2:2380".to_owned()
            ])
        );
        for bad in ["", "http://127.0.0.1", "https://a:1", "a:0", "a,"] {
            assert!(parse_endpoints(bad).is_err(), "{bad}");
        }
    }
}
