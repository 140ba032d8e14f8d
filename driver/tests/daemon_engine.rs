//! `--engine` reaches every program the driver runs: the merged classifier's (with and
//! without a binding key) and the transmit filters'. Without the `jit` feature, asking for
//! the JIT is refused with an error that says so, on the first install.

use netmux_driver::daemon::{ClassifierKind, Driver, DriverConfig};
use netmux_driver::link::MemoryLink;
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, PortBinding, QueueConfig,
    QueueId, RxMode,
};
use netmux_vm::{Program, Strategy};

/// Accepts UDP to port 80 over IPv4 (not a port filter the classifier recognises, so the
/// engine must run it).
fn program() -> Program {
    netmux_vm::verify(
        &netmux_vm::asm::assemble(
            "ldh r0, [12]\njeq r0, 0x800, +1\nreject\nldh r0, [36]\njeq r0, 80, +1\nreject\naccept 1\n",
        )
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn the_engine_choice_reaches_the_classifier_and_the_tx_filters() {
    let jit_available = netmux_vm::engine(program(), Strategy::Jit).is_ok();
    for classifier in [ClassifierKind::Merged, ClassifierKind::Linear] {
        let mut driver = Driver::new(
            Box::new(MemoryLink::new(Vec::new())),
            DriverConfig {
                strategy: Strategy::Jit,
                classifier,
                ..DriverConfig::default()
            },
        );
        let created = driver.handle(DriverRequest::CreateQueue {
            queue: QueueId(1),
            config: QueueConfig {
                slot_size: 2048,
                rx_slots: 64,
                tx_slots: 64,
                completion_slots: 64,
            },
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        });
        assert!(created.fds.is_some(), "{:?}", created.reply);
        let mut filter = 1;
        let mut install = |direction, binding: Option<PortBinding>| {
            filter += 1;
            driver
                .handle(DriverRequest::InstallFilter(FilterInstall {
                    queue: QueueId(1),
                    filter: FilterId(filter),
                    direction,
                    mode: RxMode::Owner,
                    binding,
                    program: program().to_bytes(),
                }))
                .reply
        };
        let key = PortBinding {
            protocol: 17,
            address: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ipv6: false,
            port: 53,
        };
        let with_key = install(Direction::Rx, Some(key));
        let without_key = install(Direction::Rx, None);
        let tx = install(Direction::Tx, None);
        for reply in [with_key, without_key, tx] {
            if jit_available {
                assert_eq!(reply, DriverReply::Done, "{classifier:?}");
            } else {
                assert!(
                    matches!(&reply, DriverReply::Error(e) if e.message.contains("jit")),
                    "{classifier:?}: {reply:?}"
                );
            }
        }
    }
}
