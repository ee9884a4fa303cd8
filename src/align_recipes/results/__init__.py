"""The results layer: what people do with finished runs (report, chat, merge, eval) and chains of
runs (pipeline). It sits on top of `run` and `plan` and nothing below imports it."""
