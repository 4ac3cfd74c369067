"""The cloud's behaviour: apply ops and batches, read the changes feed, process retries.

Handlers in functions/ call exactly one of these per request or message.
"""
