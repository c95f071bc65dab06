/* The console's pages, built into cgwd (daemon/web/). */
	.section .rodata
	.global console_index_html, console_index_html_len
	.global console_app_js, console_app_js_len
	.global console_style_css, console_style_css_len
console_index_html:
	.incbin "daemon/web/index.html"
console_index_html_end:
	.byte 0
	.balign 4
console_index_html_len:
	.long console_index_html_end - console_index_html
console_app_js:
	.incbin "daemon/web/app.js"
console_app_js_end:
	.byte 0
	.balign 4
console_app_js_len:
	.long console_app_js_end - console_app_js
console_style_css:
	.incbin "daemon/web/style.css"
console_style_css_end:
	.byte 0
	.balign 4
console_style_css_len:
	.long console_style_css_end - console_style_css
	.section .note.GNU-stack,"",@progbits
