"""Curation: scoring faces with the primitive model (:mod:`~omnifer.curation.scoring`),
choosing reliable pseudo-labels (:mod:`~omnifer.curation.selection`), and the curated sets in
the catalog (:mod:`~omnifer.curation.curated`: the select stage, versions, crops)."""
