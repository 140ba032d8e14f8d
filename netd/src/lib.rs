//! netd, the netmux daemon: ports, sessions and policy, the IPC protocol, the client library.
