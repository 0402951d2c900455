use quorum_sim::*;
#[test]
fn some_seeds() {
    for seed in 0..200 {
        for mode in [Mode::Safety, Mode::OverThreshold] {
            let cfg = SimConfig {
                seed,
                ops: 2000,
                mode,
                faults: Faults::Swarm,
                ..SimConfig::default()
            };
            match Sim::new(cfg, false).unwrap().run() {
                Ok(r) => {
                    if seed == 0 {
                        println!("{r}");
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
