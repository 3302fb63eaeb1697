"""GP messaging (fastlege): MsgHead with Dialogmelding or PLO out, AppRec and answers in.

Pure: no I/O. `hub.messaging.model` holds the messages as data; `hub.messaging.xml` is
the only module that imports the XML library (lxml) and does every parse, build and
schema validation, hardened against hostile input. See docs/gp-messaging.md.
"""
