"""Reading topics back and running workers, for the serving tests."""

from __future__ import annotations

import threading
import time

from neuropredict import config, kafka_io, messages, stream_report


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of a topic, with the product's own reader."""
    return stream_report.read_topic(topic, bootstrap, idle_s=1.5)


class TopicCounter:
    """Counts a topic's records as they arrive, with one consumer kept open (cheap to poll)."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import TopicPartition

        self.consumer = kafka_io.consumer(None, bootstrap, max_poll_records=50_000)
        parts = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or [])]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.count = 0

    def __call__(self) -> int:
        for recs in self.consumer.poll(timeout_ms=50).values():
            self.count += len(recs)
        return self.count

    def close(self) -> None:
        self.consumer.close()


def predictions(bootstrap: str) -> list[dict]:
    return [messages.decode(r.value) for r in read_topic(bootstrap, config.PREDICTIONS_TOPIC)]


def wait_for(predicate, timeout_s: float = 90, every_s: float = 0.25, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class WorkerThread:
    """A real Worker in a thread of the test process; stop() ends it like SIGTERM would."""

    def __init__(self, params, bootstrap: str, **kw):
        from neuropredict.worker import Worker

        self.worker = Worker(params, bootstrap=bootstrap, **kw)
        self.worker.start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    @property
    def stats(self):
        return self.worker.stats

    def stop(self, timeout_s: float = 60) -> None:
        self.worker.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"
