//! The driver's side of the operator's requests ([`OperatorRequest`]): captures and the
//! admin firewall.

use netmux_proto::driver::DriverReply;
use netmux_proto::ops::{OperatorReply, OperatorRequest};
use netmux_proto::ErrorCode;

use super::capture::CaptureError;
use super::{Driver, Response};

impl Driver {
    /// Carries out one operator request.
    pub(super) fn operator(&mut self, request: OperatorRequest) -> Response {
        match request {
            OperatorRequest::StartCapture(spec) => {
                let queue = spec.queue;
                if let Err(e) = self
                    .captures
                    .start(spec, &self.queues, self.config.strategy)
                {
                    let code = match e {
                        CaptureError::NoQueue(_) => ErrorCode::NotFound,
                        CaptureError::Itself(_) | CaptureError::AlreadyCapturing(_) => {
                            ErrorCode::InUse
                        }
                        CaptureError::TooMany => ErrorCode::Limit,
                        CaptureError::Filter(_) => ErrorCode::BadFilter,
                    };
                    return Response::error(code, e.to_string());
                }
                // A capture's queue gets its copies and nothing else: no ARP for everyone, not
                // netd's unmatched frames (a capture session binds no port, so its instance's
                // classifier names it for nothing). It transmits nothing either; its filters
                // stay known, so netd removes them as usual when the session ends.
                if let Some(slot) = self.queues.get(&queue).map(|q| q.instance) {
                    if let Some(i) = self.instances.get_mut(slot) {
                        i.queues.retain(|&q| q != queue);
                    }
                }
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.tx_filters.clear();
                }
                if self.netd_queue == Some(queue) {
                    self.netd_queue = None;
                }
                tracing::info!(queue = queue.0, "capture started");
                Response::reply(DriverReply::Operator(OperatorReply::Done))
            }
            OperatorRequest::SetFirewall { rules } => {
                let count = rules.len();
                match self.firewall.set(rules, self.config.strategy) {
                    Ok(()) => {
                        tracing::info!(rules = count, "firewall rules set");
                        Response::reply(DriverReply::Operator(OperatorReply::Done))
                    }
                    Err(e) => Response::error(ErrorCode::BadFilter, e.to_string()),
                }
            }
            OperatorRequest::FirewallCounters => Response::reply(DriverReply::Operator(
                OperatorReply::Firewall(self.firewall.counters()),
            )),
            OperatorRequest::SetRxLimit { queue, slots } => match self.queues.get_mut(&queue) {
                Some(q) => {
                    q.ring.set_rx_limit(slots);
                    Response::reply(DriverReply::Operator(OperatorReply::Done))
                }
                None => Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0)),
            },
            OperatorRequest::SetTxLimit { queue, slots } => match self.queues.get_mut(&queue) {
                Some(q) => {
                    q.ring.set_tx_limit(slots);
                    Response::reply(DriverReply::Operator(OperatorReply::Done))
                }
                None => Response::error(ErrorCode::NotFound, format!("no queue {}", queue.0)),
            },
        }
    }
}
