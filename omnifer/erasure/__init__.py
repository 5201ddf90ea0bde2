"""Erasure requests: forget a source, a photo or a face, and everything derived from it.

``omnifer forget`` is :func:`forget` (:mod:`omnifer.erasure.forget`); what a request reaches
is :func:`plan_erasure` (:mod:`omnifer.erasure.match`); distilled sets, models and reports
follow in :mod:`omnifer.erasure.derived`; :func:`find_erased_present`
(:mod:`omnifer.erasure.verify`) says whether anything erased is still there. The request
records and the row removal live in the catalog layer (:mod:`omnifer.catalog.erasures`,
:mod:`omnifer.catalog.purge`), because the crawler and compaction use them too.
"""

from omnifer.erasure.forget import ForgetResult, forget
from omnifer.erasure.match import ErasurePlan, make_rules, plan_erasure, read_rule_file
from omnifer.erasure.verify import ErasedPresence, find_erased_present

__all__ = ["ErasedPresence", "ErasurePlan", "ForgetResult", "find_erased_present", "forget",
           "make_rules", "plan_erasure", "read_rule_file"]
