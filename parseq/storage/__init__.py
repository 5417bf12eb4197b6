"""Where run result files live: a local folder or an S3 bucket, picked by URL scheme.

May import: ``parseq.core``.
"""
