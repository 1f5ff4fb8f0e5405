"""The Streamlit image chat (issue 7): logic modules here import no streamlit; `chat.py` is the page."""
