"""Overlap detect.py's stages: the next frames decode while the model runs, finished frames write behind it.

On a 2-core CPU the model's threads use both cores, and any thread running beside them at the same priority makes
them wait for each other at every layer (docs/performance.md). So the two helper threads run at the lowest priority
(nice 19, on Linux): they use the moments the model leaves a core idle. On a machine busy with other work they could
starve; a stage whose thread falls that far behind (the caller waits STARVED_SECONDS for it) is handed back to the
caller, which then does the work in turn for the rest of the run. Both queues are bounded, so memory stays a few
frames, and a failure in a thread is raised in the caller's thread as if it happened there.

Usage:
    from segtoolkit.inference.pipeline import Prefetcher, Finisher
    frames = Prefetcher(loader, depth=2)       # iterate it like the loader; close() stops the thread
    finisher = Finisher(write_frame, depth=2)  # write_frame(*args) runs in its own thread, in submit order
    finisher.submit(frame, mask)
    finisher.close()                           # waits for every submitted job; re-raises the first failure

"""

import os
import queue
import sys
import threading

POLL_SECONDS = 0.1  # how often a blocked put looks at the stop flag
STARVED_SECONDS = 0.5  # the caller waiting this long for a helper thread takes its work back


def lower_priority():
    """Make the calling thread yield to every normal thread (Linux nice is per thread)."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Prefetcher:
    """Iterate `iterable` in a background thread, up to `depth` items ahead of the consumer.

    Only for sources whose next item comes without waiting (files): a live stream's reader already keeps
    the newest frame, and reading ahead of it would only show older frames.
    """

    def __init__(self, iterable, depth=2):
        self.iterator, self.items = iter(iterable), queue.Queue(depth)
        self.stopping, self.ended, self.inline, self.leftover = threading.Event(), False, False, []
        self.thread = threading.Thread(target=self.fill, name="prefetch", daemon=True)
        self.thread.start()

    def fill(self):
        lower_priority()
        try:
            for item in self.iterator:
                if not self.put(("item", item)):
                    self.leftover.append(("item", item))  # taken back by take_over()
                    return
            if not self.put(("end", None)):
                self.leftover.append(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it in its own thread
            if not self.put(("error", error)):
                self.leftover.append(("error", error))

    def put(self, entry):
        while not self.stopping.is_set():
            try:
                self.items.put(entry, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self.ended:
            raise StopIteration
        if self.inline:
            entry = self.next_inline()
        else:
            try:
                entry = self.items.get(timeout=STARVED_SECONDS)
            except queue.Empty:
                self.take_over()
                entry = self.next_inline()
        kind, value = entry
        if kind == "item":
            return value
        self.ended = True
        if kind == "error":
            raise value
        raise StopIteration

    def take_over(self):
        """The thread is starved: stop it and read on in the caller's thread, nothing lost or repeated."""
        self.stopping.set()
        self.thread.join()
        self.inline = True
        queued = []
        while not self.items.empty():
            queued.append(self.items.get_nowait())
        self.leftover = queued + self.leftover  # what the thread held when stopped came after the queue

    def next_inline(self):
        if self.leftover:
            return self.leftover.pop(0)
        try:
            return ("item", next(self.iterator))
        except StopIteration:
            return ("end", None)

    def close(self):
        """Stop reading ahead and wait for the thread (at most the item it is reading)."""
        self.stopping.set()
        self.thread.join()


class Finisher:
    """Run `function(*args)` for each submitted job in one background thread, in order.

    submit() blocks while `depth` jobs wait; after a job has failed, submit() and close() raise its error
    (the jobs after it are dropped, as a loop would have stopped there).
    """

    def __init__(self, function, depth=2):
        self.function, self.jobs = function, queue.Queue(depth)
        self.error, self.reported, self.inline = None, False, False
        self.thread = threading.Thread(target=self.work, name="finisher", daemon=True)
        self.thread.start()

    def work(self):
        lower_priority()
        while True:
            args = self.jobs.get()
            if args is None:
                return
            self.run(args)

    def run(self, args):
        if self.error is None:
            try:
                self.function(*args)
            except BaseException as error:  # raised again in the submitting thread
                self.error = error

    def raise_failure(self):
        if self.error is not None and not self.reported:
            self.reported = True  # once: close() in a `finally` must not replace the error being raised
            raise self.error

    def submit(self, *args):
        self.raise_failure()
        if not self.inline:
            try:
                self.jobs.put(args, timeout=STARVED_SECONDS)
                return
            except queue.Full:  # starved: let it finish what it holds, then run every job here
                self.stop_thread()
                self.inline = True
        self.run(args)
        self.raise_failure()

    def stop_thread(self):
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()

    def close(self):
        """Finish every submitted job, stop the thread, and raise a job's failure if there was one."""
        self.stop_thread()
        self.raise_failure()
