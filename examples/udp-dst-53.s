; IPv4/UDP with destination port 53 (DNS queries): what `tcpdump 'ip and udp dst port 53'`
; matches. Accepts with the value 1, rejects everything else.
;
;   netmux vm run examples/udp-dst-53.s examples/sample.pcap
;
; Offsets count from the start of the Ethernet frame. A load past the captured bytes rejects
; the frame, so a frame cut short before the port is rejected, as libpcap does.

        ldh r0, [12]            ; EtherType
        jeq r0, 0x800, ipv4
        reject                  ; not IPv4: ARP, IPv6, VLAN-tagged, ...
ipv4:   ldb r0, [23]            ; IPv4 protocol
        jeq r0, 17, udp
        reject                  ; not UDP
udp:    ldh r0, [20]            ; flags and fragment offset
        jset r0, 0x1fff, frag   ; a later fragment carries no UDP header
        ldb r1, [14]            ; version and header length (IHL, in 32-bit words)
        and r1, 0xf
        lsh r1, 2               ; IPv4 header length in bytes: 20, more with options
        ldh r0, [r1 + 16]       ; UDP destination port: 14 (Ethernet) + header + 2
        jeq r0, 53, dns
        reject
dns:    accept 1
frag:   reject
