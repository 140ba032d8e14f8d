//! Overlays kept in netd's configuration file: restored at start before the instances that
//! live on them, and one whose mapping file is missing comes up degraded instead of keeping
//! netd from starting.

use netmux_netd::driver_link::DriverCommand;
use netmux_proto::driver::DriverRequest;
use netmux_proto::LinkInfo;

#[test]
fn kept_overlays_are_restored_before_their_instances_and_a_bad_file_leaves_one_degraded() {
    let dir = netmux_testkit::TempDir::new("netd-overlay");
    let good = dir.join("blue.json");
    std::fs::write(
        &good,
        r#"{"02:b1:00:00:00:02": {"ip": "192.0.2.2", "port": 4789}}"#,
    )
    .unwrap();
    let config_file = dir.join("netd.toml");
    std::fs::write(
            &config_file,
            format!(
                "[[instance]]\nname = \"web\"\nmac = \"02:b1:00:00:00:01\"\nip = \"10.0.0.1/24\"\noverlay = \"blue\"\n\n\
                 [[overlay]]\nname = \"blue\"\nvni = 42\nmapping = \"files:{}\"\n\n\
                 [[overlay]]\nname = \"red\"\nvni = 43\nmapping = \"files:{}\"\n",
                good.display(),
                dir.join("missing.json").display()
            ),
        )
        .unwrap();
    let mut config = netmux_netd::Config::new(dir.join("run"));
    config.addrs.ipv4 = Some(("192.0.2.1".parse().unwrap(), 24));
    config.instances_file = Some(config_file.clone());
    let link = LinkInfo {
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    };
    let (netd, commands) = netmux_netd::service::Netd::new(&config, link).unwrap();
    let position = |f: &dyn Fn(&DriverCommand) -> bool| commands.iter().position(f);
    let blue = position(
        &|c| matches!(c, DriverCommand::Overlay(DriverRequest::SetOverlay(i)) if i.vni == 42),
    )
    .expect("blue restored");
    let web = position(&|c| matches!(c, DriverCommand::SetInstance(i) if i.overlay == Some(42)))
        .expect("web restored on blue");
    assert!(blue < web, "{commands:?}");
    let views = netd.overlay_views();
    assert_eq!(views[0].state, "ok");
    assert!(
        views[1].state.starts_with("degraded: "),
        "{}",
        views[1].state
    );
    assert_eq!(views[0].instances, vec!["web".to_string()]);
}
