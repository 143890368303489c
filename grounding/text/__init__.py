"""Text: report sections, the 22-attribute vocabulary and its extraction rules, Word2Vec vectors,
the Indiana scorer.
"""
