//! Idle queues cost nothing: the transmit path visits only the queues that have work.
//!
//! Every queue is either **active** (visited by each turn of [`Driver::poll_tx`], in the
//! order it became active), **parked** (left out of the turns until its client transmits) or
//! **off** (closed or faulted: in neither list, until netd destroys or reconfigures it).
//!
//! - A new (or reconfigured) queue is active. The driver's end of its doorbell is registered
//!   once, in one level-triggered epoll set per driver, keyed by its [`QueueId`].
//! - An active queue that had nothing to take for [`PARK_AFTER_IDLE_TURNS`] consecutive
//!   turns, with no frames held for a busy link and no fragments held, is parked: the driver
//!   arms its wake-up ([`DriverQueue::prepare_tx_wait`](netmux_ring::DriverQueue::prepare_tx_wait):
//!   the flag asking the client to ring the doorbell when it sends, then a re-check of the
//!   ring) and parks it only when the ring is still empty, so no frame sent meanwhile is
//!   missed. Before the control loop sleeps, every active queue without held frames is
//!   parked the same way ([`Driver::prepare_sleep`]), so a sleep waits on one descriptor
//!   ([`Driver::queue_wake_fd`]) instead of one per queue.
//! - The epoll set is looked at with a zero timeout every [`WAKE_CHECK_TURNS`] turns and
//!   after a sleep; a parked queue whose doorbell rang is woken
//!   ([`end_tx_wait`](netmux_ring::DriverQueue::end_tx_wait): the flag withdrawn, the
//!   doorbell drained) and becomes active at the end of the turn order. With no queue parked
//!   the set is never looked at.
//! - A queue whose client end of the doorbell is closed for good (every process that held it
//!   ended or closed it) can never ring again, and its end would stay readable: epoll reports
//!   the hang-up, the queue leaves the set and becomes active (frames sent before the hang-up
//!   are still taken), and where it would park it goes off instead.
//!
//! A turn therefore costs in proportion to the active queues, and a sleep one descriptor for
//! all queues: a parked queue costs nothing until its client sends. The price is a client's:
//! while its queue is parked, each send rings the doorbell (one system call), as it did
//! whenever the driver slept.

use std::os::fd::{BorrowedFd, OwnedFd};

use netmux_proto::driver::QueueId;
use rustix::event::epoll;

use super::{Driver, IdMap, Queue};

/// Consecutive turns without frames after which an active queue is parked: a client that
/// keeps sending (a request-response exchange, a paced stream) keeps its queue active and
/// never pays for a wake-up, and a quiet one leaves the turns within a fraction of a
/// millisecond of an idle driver's spinning.
pub const PARK_AFTER_IDLE_TURNS: u32 = 256;
/// Turns between two looks at the parked queues' wake-ups: a look is a system call
/// (`epoll_wait` with a zero timeout), which every turn of a busy driver would otherwise pay
/// (a turn that receives a batch but transmits nothing included); a woken queue waits at
/// most this many turns, a few microseconds when the driver has little to do.
pub const WAKE_CHECK_TURNS: u32 = 16;
/// Wake-ups collected per look; more wait for the next look (the epoll set is
/// level-triggered and hands them out in turn).
const WAKE_EVENTS: usize = 64;

/// Where a queue is in the transmit path's schedule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Visited every turn.
    #[default]
    Active,
    /// Left out until its client signals.
    Parked,
    /// Closed or faulted: in neither list.
    Off,
}

/// A queue's place in the schedule.
#[derive(Debug, Default)]
pub(super) struct QueueSched {
    pub(super) state: State,
    /// Turns in a row it had nothing to take.
    pub(super) idle_turns: u32,
    /// Armed by [`Driver::prepare_sleep`] while still active (frames had arrived): disarmed
    /// by [`Driver::end_sleep`].
    armed: bool,
    /// Its client's end of the doorbell is closed: it is out of the epoll set, and goes off
    /// instead of parking.
    hung_up: bool,
}

/// The transmit path's schedule: the active queues in turn order and the epoll set of every
/// queue's wake-up.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// Made with the first queue (see [`Schedule::register`]).
    epoll: Option<OwnedFd>,
    /// The active queues, in turn order. May hold queues that left it (destroyed, parked,
    /// off) until [`Driver::compact_active`] runs.
    pub(super) active: Vec<QueueId>,
    /// Whether `active` holds queues that left it.
    stale: bool,
    /// Parked queues.
    parked: usize,
    /// Turns since the last look at the epoll set.
    turns: u32,
}

impl Schedule {
    /// Registers a new queue's wake-up (the driver's end of its doorbell) and makes it active.
    pub(super) fn register(&mut self, id: QueueId, wake: BorrowedFd<'_>) -> std::io::Result<()> {
        let epoll = match &self.epoll {
            Some(epoll) => epoll,
            None => self
                .epoll
                .insert(epoll::create(epoll::CreateFlags::CLOEXEC)?),
        };
        epoll::add(
            epoll,
            wake,
            epoll::EventData::new_u64(u64::from(id.0)),
            epoll::EventFlags::IN,
        )?;
        self.active.push(id);
        Ok(())
    }

    /// Forgets a queue's wake-up (before its doorbell is closed) and its place in the
    /// schedule.
    pub(super) fn unregister(&mut self, sched: &mut QueueSched, wake: BorrowedFd<'_>) {
        if let Some(epoll) = &self.epoll {
            // Already gone when the queue is off.
            let _ = epoll::delete(epoll, wake);
        }
        self.leave(sched, State::Off);
    }

    /// Moves a queue out of its state into `to` (parked or off); it leaves the active list at
    /// the next compaction.
    fn leave(&mut self, sched: &mut QueueSched, to: State) {
        match sched.state {
            State::Active => self.stale = true,
            State::Parked => self.parked -= 1,
            State::Off => {}
        }
        if to == State::Parked {
            self.parked += 1;
        }
        sched.state = to;
        sched.idle_turns = 0;
    }

    /// Forgets every queue (the driver failed closed; their doorbells are closed with them).
    pub(super) fn clear(&mut self) {
        self.epoll = None;
        self.active.clear();
        self.stale = false;
        self.parked = 0;
        self.turns = 0;
    }

    /// Number of parked queues.
    pub(super) fn parked(&self) -> usize {
        self.parked
    }

    /// The epoll set of every queue's wake-up, readable when a parked queue's client sent.
    pub(super) fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.epoll.as_ref().map(|fd| fd.as_fd())
    }

    /// At the start of a turn: whether to look at the parked queues' wake-ups now.
    pub(super) fn check_due(&mut self) -> bool {
        self.turns = self.turns.saturating_add(1);
        self.parked > 0 && self.turns >= WAKE_CHECK_TURNS
    }
}

impl Driver {
    /// Registers a new or re-created queue's ring in the schedule (active).
    pub(super) fn schedule_queue(&mut self, id: QueueId) -> std::io::Result<()> {
        let Some(queue) = self.queues.get_mut(&id) else {
            return Ok(());
        };
        queue.sched = QueueSched::default();
        self.sched.register(id, queue.ring.driver_wake_fd())
    }

    /// After a turn found nothing in an active queue's ring: counts the idle turn and parks
    /// the queue after [`PARK_AFTER_IDLE_TURNS`]; a closed queue goes off. The queue may
    /// still hold frames for the link or fragments (then it stays).
    pub(super) fn note_idle_turn(sched: &mut Schedule, queue: &mut Queue) {
        if !queue.link_held.is_empty() || !queue.fragments.is_empty() {
            queue.sched.idle_turns = 0;
            return;
        }
        if queue.ring.is_closed() {
            Self::go_off(sched, queue);
            return;
        }
        queue.sched.idle_turns += 1;
        if queue.sched.idle_turns < PARK_AFTER_IDLE_TURNS {
            return;
        }
        match queue.ring.prepare_tx_wait() {
            Ok(true) if queue.sched.hung_up => {
                queue.ring.end_tx_wait();
                Self::go_off(sched, queue);
            }
            Ok(true) => sched.leave(&mut queue.sched, State::Parked),
            // Frames arrived meanwhile (or the ring faults, which the next turn reports).
            Ok(false) | Err(_) => {
                queue.ring.end_tx_wait();
                queue.sched.idle_turns = 0;
            }
        }
    }

    /// A closed queue leaves both lists and the epoll set.
    fn go_off(sched: &mut Schedule, queue: &mut Queue) {
        if let Some(epoll) = &sched.epoll {
            let _ = epoll::delete(epoll, queue.ring.driver_wake_fd());
        }
        sched.leave(&mut queue.sched, State::Off);
    }

    /// Drops the queues that left the active list from it, keeping the turn order.
    pub(super) fn compact_active(&mut self) {
        if !self.sched.stale {
            return;
        }
        let queues = &self.queues;
        let mut seen = IdMap::default();
        self.sched.active.retain(|id| {
            queues
                .get(id)
                .is_some_and(|q| q.sched.state == State::Active)
                && seen.insert(*id, ()).is_none()
        });
        self.sched.stale = false;
    }

    /// Wakes the parked queues whose clients sent (their doorbell rang): each is disarmed and
    /// joins the end of the active list. A queue whose client end hung up leaves the set and
    /// wakes too (see the module documentation). Looks without waiting. Returns how many
    /// woke.
    pub(super) fn wake_parked(&mut self) -> usize {
        self.sched.turns = 0;
        let Some(epoll) = &self.sched.epoll else {
            return 0;
        };
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); WAKE_EVENTS];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let events: &[epoll::Event] = match epoll::wait(epoll, &mut events[..], Some(&zero)) {
            Ok((ready, _)) => ready,
            Err(e) => {
                if e != rustix::io::Errno::INTR {
                    tracing::warn!("looking for queue wake-ups: {e}");
                }
                return 0;
            }
        };
        let mut woken = 0;
        for event in events {
            let id = QueueId(u32::try_from(event.data.u64()).unwrap_or(u32::MAX));
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            // Drains the doorbell in every state: an active queue's client may have rung just
            // before its flag was withdrawn, and a level-triggered set reports it until
            // drained.
            let rung = queue.ring.end_tx_wait();
            // Copied out: the event is a packed struct.
            let flags = { event.flags };
            let hung_up = flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP);
            if hung_up && !queue.sched.hung_up {
                // Readable for ever from now on: out of the set, or every look reports it.
                let _ = epoll::delete(epoll, queue.ring.driver_wake_fd());
                queue.sched.hung_up = true;
                tracing::debug!(
                    queue = id.0,
                    "the client's end of the queue's doorbell is closed"
                );
            }
            if queue.sched.state == State::Parked && hung_up && !rung {
                // Its client sent nothing since it parked (a send after parking rings) and
                // never will: it goes off without a turn.
                self.sched.parked -= 1;
                queue.sched.state = State::Off;
                queue.sched.idle_turns = 0;
            } else if queue.sched.state == State::Parked {
                self.sched.parked -= 1;
                queue.sched.state = State::Active;
                queue.sched.idle_turns = 0;
                self.sched.active.push(id);
                woken += 1;
            }
        }
        woken
    }

    /// Before sleeping: parks every active queue whose ring is empty (arming its wake-up) and
    /// that holds no frames for a busy link. Returns false when some queue already has frames
    /// waiting (do not sleep); call [`end_sleep`](Self::end_sleep) afterwards either way.
    pub fn prepare_sleep(&mut self) -> bool {
        let mut idle = true;
        for i in 0..self.sched.active.len() {
            let id = self.sched.active[i];
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            if queue.sched.state != State::Active || !queue.link_held.is_empty() {
                // Its ring waits for the link, not the other way round (see `link_held`).
                continue;
            }
            if queue.ring.is_closed() && queue.fragments.is_empty() {
                Self::go_off(&mut self.sched, queue);
                continue;
            }
            match queue.ring.prepare_tx_wait() {
                Ok(true) if queue.sched.hung_up => {
                    queue.ring.end_tx_wait();
                    Self::go_off(&mut self.sched, queue);
                }
                Ok(true) => self.sched.leave(&mut queue.sched, State::Parked),
                // A faulting queue is reported by the transmit path; here it only must not
                // sleep the driver forever, so it counts as busy.
                Ok(false) | Err(_) => {
                    queue.sched.armed = true;
                    idle = false;
                }
            }
        }
        self.compact_active();
        idle
    }

    /// After sleeping: withdraws the wake-up requests of the queues still active, and wakes
    /// the parked queues whose clients sent.
    pub fn end_sleep(&mut self) {
        for id in &self.sched.active {
            if let Some(queue) = self.queues.get_mut(id) {
                if std::mem::take(&mut queue.sched.armed) {
                    queue.ring.end_tx_wait();
                }
            }
        }
        self.wake_parked();
    }

    /// One descriptor for every queue's wake-up, for an event loop: readable when the client
    /// of a parked queue sent (see [`prepare_sleep`](Self::prepare_sleep)). `None` before the
    /// first queue.
    pub fn queue_wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sched.wake_fd()
    }

    /// Queues the transmit path visits each turn (those with work, or idle for less than
    /// [`PARK_AFTER_IDLE_TURNS`] turns).
    pub fn active_queue_count(&self) -> usize {
        self.sched.active.len()
    }

    /// Queues parked until their clients send.
    pub fn parked_queue_count(&self) -> usize {
        self.sched.parked()
    }
}
