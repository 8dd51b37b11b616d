fn main() {
    let data = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hawser"));
    let mut ebpf = aya::EbpfLoader::new().default_map_pin_directory("/sys/fs/bpf/probe").load(data).unwrap();
    for (name, prog) in ebpf.programs_mut() {
        println!("{name}");
        match prog {
            aya::programs::Program::CgroupSockAddr(p) => p.load().unwrap(),
            aya::programs::Program::SockOps(p) => p.load().unwrap(),
            aya::programs::Program::SkLookup(p) => p.load().unwrap(),
            _ => {}
        }
    }
}
