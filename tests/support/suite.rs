//! The `main` of every integration test binary: trials run one at a time (they share the
//! lab's broker nodes, break them and count sessions on them), and the lab is brought up once
//! for the trials that need it and stopped after them (if this binary started it).

use super::faults::Fault;
use super::lab::Lab;
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;

pub struct Suite {
    args: Arguments,
    lab: Arc<Option<Lab>>,
    trials: Vec<Trial>,
}

impl Suite {
    /// Parses the test harness's arguments and brings up `clusters` (unless only listing).
    pub fn new(clusters: &[&'static str]) -> Suite {
        let mut args = Arguments::from_args();
        args.test_threads = Some(1);
        let lab =
            Arc::new((!args.list).then(|| Lab::up(clusters).unwrap_or_else(|e| panic!("{e}"))));
        Suite {
            args,
            lab,
            trials: Vec::new(),
        }
    }

    /// A trial that needs no broker.
    pub fn plain(mut self, name: &str, test: fn() -> Result<(), Failed>) -> Suite {
        self.trials.push(Trial::test(name, test));
        self
    }

    /// A trial that runs against the lab.
    pub fn with_lab(mut self, name: &str, test: fn(&Lab) -> Result<(), Failed>) -> Suite {
        let lab = self.lab.clone();
        self.trials.push(Trial::test(name, move || {
            test(lab.as_ref().as_ref().expect("the lab is up"))
        }));
        self
    }

    /// A trial that runs against the lab, given `arg` (a fault of its own table, say).
    pub fn with_lab_arg<T: Copy + Send + 'static>(
        mut self,
        name: &str,
        arg: T,
        test: fn(&Lab, T) -> Result<(), Failed>,
    ) -> Suite {
        let lab = self.lab.clone();
        self.trials.push(Trial::test(name, move || {
            test(lab.as_ref().as_ref().expect("the lab is up"), arg)
        }));
        self
    }

    /// One trial per fault of the table, named `{broker}_{fault}`: `test` runs traffic through
    /// the fault.
    pub fn faults(mut self, broker: &str, test: fn(&Lab, Fault) -> Result<(), Failed>) -> Suite {
        for fault in Fault::ALL {
            let lab = self.lab.clone();
            let name = format!("{broker}_{}", fault.name());
            self.trials.push(Trial::test(name, move || {
                test(lab.as_ref().as_ref().expect("the lab is up"), fault)
            }));
        }
        self
    }

    /// One trial per fault in `faults`, named `{broker}_tls_{fault}`: `test` runs traffic
    /// through the fault with tether reaching the nodes over TLS.
    pub fn faults_over_tls(
        mut self,
        broker: &str,
        faults: &[Fault],
        test: fn(&Lab, Fault) -> Result<(), Failed>,
    ) -> Suite {
        for &fault in faults {
            let lab = self.lab.clone();
            let name = format!("{broker}_tls_{}", fault.name());
            self.trials.push(Trial::test(name, move || {
                test(lab.as_ref().as_ref().expect("the lab is up"), fault)
            }));
        }
        self
    }

    /// Runs the trials, stops the lab, and exits with the harness's verdict.
    pub fn run(self) -> ! {
        let conclusion = libtest_mimic::run(&self.args, self.trials);
        drop(self.lab);
        conclusion.exit()
    }
}
