//! Prints what Ferry sees now and what the default policy makes of it (what `ferry conditions`
//! will show). With `--watch`, prints again on every change until interrupted.

use ferry_conditions::{Observer, ObserverConfig, local_now, report};
use ferry_core::policy::Policy;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let policy = Policy::default();
    let observer = Observer::start(ObserverConfig::default()).await;
    print!("{}", report(&observer.current(), &policy, &local_now()));
    if std::env::args().any(|a| a == "--watch") {
        let mut rx = observer.subscribe();
        while rx.changed().await.is_ok() {
            let conditions = rx.borrow_and_update().clone();
            println!();
            print!("{}", report(&conditions, &policy, &local_now()));
        }
    }
}
