//! Stop signals: a `watch<bool>` that turns true once and stays true
//! (pingora's `ShutdownWatch` has this shape), and the combination of two.

use tokio::sync::watch;

/// A stop signal that turns true once `a` or `b` does. A side whose sender
/// is dropped never fires; with both gone, neither does the result. Spawns
/// a task on the current runtime.
pub fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let fired = *a.borrow_and_update() || *b.borrow_and_update();
    let (tx, rx) = watch::channel(fired);
    if fired {
        return rx;
    }
    tokio::spawn(async move {
        let (mut a_live, mut b_live) = (true, true);
        loop {
            tokio::select! {
                r = a.changed(), if a_live => match r {
                    Ok(()) if *a.borrow_and_update() => break,
                    Ok(()) => {}
                    Err(_) => a_live = false,
                },
                r = b.changed(), if b_live => match r {
                    Ok(()) if *b.borrow_and_update() => break,
                    Ok(()) => {}
                    Err(_) => b_live = false,
                },
                else => return,
            }
        }
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_when_either_side_does() {
        for side in [0, 1] {
            let (a_tx, a) = watch::channel(false);
            let (b_tx, b) = watch::channel(false);
            let mut both = either(a, b);
            let tx = if side == 0 { &a_tx } else { &b_tx };
            tx.send_replace(true);
            both.wait_for(|s| *s).await.expect("fired");
        }
    }

    #[tokio::test]
    async fn a_dropped_side_leaves_the_other() {
        let (a_tx, a) = watch::channel(false);
        let (b_tx, b) = watch::channel(false);
        let mut both = either(a, b);
        drop(a_tx);
        tokio::task::yield_now().await;
        assert!(!*both.borrow());
        b_tx.send_replace(true);
        both.wait_for(|s| *s).await.expect("fired");
    }

    #[tokio::test]
    async fn starts_fired_when_a_side_already_is() {
        let (_a_tx, a) = watch::channel(true);
        let (_b_tx, b) = watch::channel(false);
        assert!(*either(a, b).borrow());
    }
}
