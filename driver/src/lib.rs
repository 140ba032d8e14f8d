//! The netmux driver: owns the link, reassembles and classifies received frames, and checks
//! every transmitted frame on a private copy.
//!
//! # The path of a received frame
//!
//! 1. [`link`]: a backend (`tap:`, `afpacket:`, `pcap:`, `virtual:`, memory) receives a batch
//!    into driver-private buffers ([`netmux_ring::FrameBatch`]).
//! 2. [`daemon::Driver::poll_rx`] hands each frame to [`reassembly`], which holds fragments
//!    until their datagram is whole (headers read through [`netmux_wire`]).
//! 3. [`daemon`] sends ARP that concerns everyone to every queue, and every other frame to
//!    the queues the merged classifier ([`netmux_classify::Classifier`]) names, or to netd's
//!    queue when it names none.
//! 4. The frame is copied into each receiving queue's rx ring ([`netmux_ring::DriverQueue`]),
//!    which the client reads with `netmux_client`.
//!
//! # The path of a transmitted frame
//!
//! 1. [`daemon::Driver::poll_tx`] takes a batch from a queue's tx ring, copying each frame
//!    into driver-private memory ([`netmux_ring::DriverQueue::take_tx`]).
//! 2. [`daemon::tx::check`] runs on that copy: length rules and the fragment rule
//!    ([`netmux_wire::ip`]), then the queue's verified tx filters, and names the reason of a
//!    rejection.
//! 3. Accepted frames go to the [`link`]; every frame gets a completion in the queue's
//!    completion ring; tap queues observe what was sent.
//!
//! [`daemon::control`] puts the driver behind its control socket (netd is the only peer) and
//! [`cli`] is the `netmux driver` command.
#![deny(unsafe_code)]

pub mod cli;
pub mod daemon;
pub mod link;
pub mod reassembly;
mod sys;
