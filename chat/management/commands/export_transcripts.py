"""``python manage.py export_transcripts``: conversations as JSONL (a fine-tuning file) or CSV, to stdout.

The same filters as the operators' list; conversations are streamed a chunk at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat.operators import exports
from chat.operators.selectors import ReviewFilters, conversations_for_review, conversations_matching


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2025-01-31") from error


class Command(BaseCommand):
    help = "Write conversations to stdout: one JSON object per line (OpenAI chat format) or one CSV row each."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--since", type=_day, help="Only conversations started on or after this day.")
        parser.add_argument("--until", type=_day, help="Only conversations started on or before this day.")
        verified = parser.add_mutually_exclusive_group()
        verified.add_argument("--verified", dest="verified", action="store_true", default=None,
                              help="Only conversations whose customer was verified.")
        verified.add_argument("--not-verified", dest="verified", action="store_false",
                              help="Only conversations whose customer was never verified.")
        parser.add_argument("--search", default="", help="Only conversations where this text was said or looked up.")
        parser.add_argument("--tool", default="", help="Only conversations that called this tool.")
        parser.add_argument("--problem", choices=["error", "fallback", "any"], default="")
        parser.add_argument("--rating", choices=["up", "down", "none"], default="")
        parser.add_argument("--chunk-size", type=int, default=exports.EXPORT_CHUNK_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        filters = ReviewFilters(
            q=options["search"],
            since=options["since"],
            until=options["until"],
            verified=options["verified"],
            tool=options["tool"],
            problem=options["problem"],
            rating=options["rating"],
        )
        if options["format"] == "csv":
            lines = exports.csv_lines(conversations=conversations_for_review(filters=filters),
                                      chunk_size=options["chunk_size"])
        else:
            lines = exports.jsonl_lines(conversations=conversations_matching(filters=filters),
                                        chunk_size=options["chunk_size"])
        try:
            for line in lines:
                self.stdout.write(line, ending="")
            self.stdout.flush()
        except BrokenPipeError:
            # The reader stopped early (``| head``): nothing more is wanted, and that is no failure. Python's
            # own flush of stdout at exit would raise again: stdout goes to /dev/null (the documented way).
            if options.get("stdout") is None:  # the process's own stdout, not a stream a caller passed
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
