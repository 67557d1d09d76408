//! STOMP heart-beating (1.1+): each side says in CONNECT/CONNECTED how often it can send
//! (`cx`/`sx`) and wants to receive (`cy`/`sy`); the interval in each direction is the larger of
//! the two numbers, or none if either is 0. tether negotiates each leg on its own.

use std::time::Duration;

/// A `heart-beat` header value: (can send every, wants to receive every), in milliseconds.
pub fn parse(value: Option<&str>) -> (u64, u64) {
    let Some((send, receive)) = value.and_then(|v| v.split_once(',')) else {
        return (0, 0);
    };
    (
        send.trim().parse().unwrap_or(0),
        receive.trim().parse().unwrap_or(0),
    )
}

pub fn header(send: Duration, receive: Duration) -> String {
    format!("{},{}", send.as_millis(), receive.as_millis())
}

/// One direction's interval from the sender's offer and the receiver's wish.
fn interval(offer: u64, wish: u64) -> Option<Duration> {
    (offer > 0 && wish > 0).then(|| Duration::from_millis(offer.max(wish)))
}

/// The heart-beats of one leg, from tether's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Beats {
    /// tether sends something at least this often.
    pub send_every: Option<Duration>,
    /// The peer sends something at least this often.
    pub expect_every: Option<Duration>,
}

impl Beats {
    /// tether as the client (upstream leg): it offered `ours` = (cx, cy), the node answered
    /// `theirs` = (sx, sy).
    pub fn as_client(ours: (u64, u64), theirs: (u64, u64)) -> Beats {
        Beats {
            send_every: interval(ours.0, theirs.1),
            expect_every: interval(theirs.0, ours.1),
        }
    }

    /// tether as the server (client leg): the client offered `theirs` = (cx, cy), tether answers
    /// with [`Beats::server_offer`].
    pub fn as_server(theirs: (u64, u64), ours: (u64, u64)) -> Beats {
        Beats {
            send_every: interval(ours.0, theirs.1),
            expect_every: interval(theirs.0, ours.1),
        }
    }

    /// What tether offers a client: to send as often as the client wants to receive (at most
    /// every 100 ms) and to take the client's beats at the client's own pace.
    pub fn server_offer(theirs: (u64, u64)) -> (u64, u64) {
        let send = if theirs.1 > 0 { theirs.1.max(100) } else { 0 };
        (send, theirs.0)
    }
}

/// How long a peer may be silent before it is taken for dead: three intervals.
pub fn silence_limit(expect_every: Duration) -> Duration {
    expect_every * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_tolerates_junk() {
        assert_eq!(parse(Some("1000,2000")), (1000, 2000));
        assert_eq!(parse(Some(" 0 , 500")), (0, 500));
        assert_eq!(parse(Some("x,y")), (0, 0));
        assert_eq!(parse(None), (0, 0));
    }

    #[test]
    fn each_direction_takes_the_larger_number_or_none() {
        let beats = Beats::as_client((1000, 1000), (5000, 0));
        assert_eq!(beats.send_every, None, "the node wants none");
        assert_eq!(beats.expect_every, Some(Duration::from_secs(5)));
    }

    #[test]
    fn tether_meets_the_clients_wishes() {
        let client = (4000, 10_000);
        let offer = Beats::server_offer(client);
        assert_eq!(offer, (10_000, 4000));
        let beats = Beats::as_server(client, offer);
        assert_eq!(beats.send_every, Some(Duration::from_secs(10)));
        assert_eq!(beats.expect_every, Some(Duration::from_secs(4)));
        assert_eq!(
            Beats::as_server((0, 0), Beats::server_offer((0, 0))),
            Beats::default()
        );
    }
}
