"""mtad.inbound.form: the bodies of route POSTs (Mailgun's parsed and raw forms), built off the event loop.

Job: ``parse`` (a message to the parsed fields), ``quotes`` (stripped-text/-signature/-html), ``build`` (the
multipart body), ``worker`` (the processes that build them). Imports ``mtad.mail`` and ``mtad.base`` only.
"""
