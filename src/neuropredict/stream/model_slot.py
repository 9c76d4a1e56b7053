"""The model a worker serves, and the symbols' state that belongs to it: loaded from the registry
(`@production`, or one pinned version), watched for promotions, swapped between two batches; a
swap to a model with another window rebuilds every symbol's window from the topic."""

from __future__ import annotations

import logging

from neuropredict import registry
from neuropredict.forecaster import limit_threads
from neuropredict.kafka_io import TopicReader
from neuropredict.stream import restore
from neuropredict.stream.changelog import Changelog
from neuropredict.stream.rules import TickRules
from neuropredict.stream.state import SymbolBook
from neuropredict.stream.watcher import ModelWatcher

log = logging.getLogger(__name__)


class ModelSlot:
    """The served model, its symbols' book, and the watcher that brings the next model."""

    def __init__(self, model_name: str, alias: str, rules: TickRules, restore_lookback_max: int,
                 pinned_version: str | None = None, changelog: Changelog | None = None, stored_open: bool = False):
        self.model_name, self.alias, self.rules = model_name, alias, rules
        self.restore_lookback_max = restore_lookback_max
        self.changelog = changelog  # where restores read the recent ticks first (else the input)
        self.stored_open = stored_open  # the state topic's open forecasts are this slot's (production's)
        self.pinned_version = pinned_version  # serve exactly this version; no hot swap
        self.served: registry.ServedModel | None = None
        self.book: SymbolBook | None = None
        self.model_id: str | None = None
        self.watcher: ModelWatcher | None = None

    @property
    def loaded(self) -> bool:
        return self.served is not None

    @property
    def version(self) -> str:
        return self.served.version if self.served else ""

    @property
    def forecaster(self):
        return self.served.forecaster

    def load(self, model_threads: int | None = None) -> None:
        """The first model, warmed up (a missing one raises ModelNotFoundError); model_threads:
        TensorFlow's threads, set before it starts (a serving process's first load)."""
        if model_threads is not None:
            limit_threads(model_threads)
        self.adopt(registry.load(self.model_name, self.alias, version=self.pinned_version))

    def adopt(self, served: registry.ServedModel) -> None:
        """Serve this model from the start, warmed up."""
        self._use(served, None, None)
        self.served.forecaster.warm_up()

    def watch(self, poll_interval_s: float) -> None:
        """Poll the alias in the background. A slot that was never loaded (a shadow) gets its
        first model this way, so the worker never waits for it."""
        if self.pinned_version is None:
            self.watcher = ModelWatcher(self.model_name, self.alias, self.served, poll_interval_s)
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher:
            self.watcher.stop()

    def maybe_swap(self, reader: TopicReader, consumer) -> bool:
        """Between two batches: switch to a newly promoted model the watcher has loaded."""
        new = self.watcher.take() if self.watcher else None
        if new is None:
            return False
        if self.loaded:
            log.info("hot swap: %s v%s -> v%s (alias %s moved)", self.model_name, self.version, new.version, self.alias)
        else:
            log.info("%s@%s: v%s loaded", self.model_name, self.alias, new.version)
        self._use(new, reader, consumer)
        return True

    def resume(self, reader: TopicReader, consumer) -> None:
        """A book for the served model, rebuilt from the topics (a slot that sat idle)."""
        self._use(self.served, reader, consumer)

    def restore(self, reader: TopicReader, consumer, partitions) -> None:
        """Rebuild the symbols of newly owned partitions from the topic (no warm-up)."""
        if self.book is None:  # a shadow whose model has not arrived yet
            return
        restore.rebuild(self.book, reader, consumer, partitions, self.served, self.restore_lookback_max,
                        self.changelog, stored_open=self.stored_open)

    def _use(self, served: registry.ServedModel, reader: TopicReader | None, consumer) -> None:
        f = served.forecaster
        self.served, self.model_id = served, registry.model_id(self.model_name, served.version)
        if self.book is None or (self.book.window, self.book.intraday) != (f.window, f.intraday):
            old, self.book = self.book, SymbolBook(self.rules, f.window, f.intraday)
            if old is not None:  # another window: read the history back, keep the open forecasts
                self.book.states = old.states
                restore.rebuild(self.book, reader, consumer, consumer.assignment(), served,
                                self.restore_lookback_max, self.changelog, keep_open=True)
            elif consumer is not None:  # a first model mid-stream (a shadow): windows from the topic,
                restore.rebuild(self.book, reader, consumer, consumer.assignment(), served,  # none open:
                                self.restore_lookback_max, self.changelog, reopen=False)  # it published none
